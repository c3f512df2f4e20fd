"""Dr.E's prompt (Sec. 4.3): the paper's template as token-id pieces around the graph tokens,
and each class's answer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: the paper's prompt (Sec. 4.3), split around the classes and the codes of each view
PROMPT_HEAD = "Given a node, you need to classify it among {classes}."
PROMPT_VIEW = (" With the node's {hop}-hop information being", ", {hop}-hop information being")
PROMPT_TAIL = ", the node should be classified as:"
#: the zero-shot baseline's prompt (our wording around the paper's)
ZERO_SHOT_PROMPT = "Given a node, you need to classify it among {classes}. The node's text: {text}\nThe node should be classified as:"

# --------------------------------------------------------------------------- prompt and scoring (Sec. 4.3)


def class_display_names(class_names: Sequence[str]) -> list[str]:
    """Class names as words (``Neural_Networks`` -> ``Neural Networks``)."""
    return [c.replace("_", " ") for c in class_names]


@dataclass
class PromptTemplate:
    """The paper's prompt as token-id pieces around the graph tokens (Sec. 4.3).

    Attributes:
        pieces: ``views + 1`` lists of token ids; the prompt is ``pieces[0] codes_1 pieces[1]
            ... codes_T pieces[T]``.
        class_ids: ``[C]`` lists of token ids of each class's answer (``" " + name`` then EOS).
    """

    pieces: list[list[int]]
    class_ids: list[list[int]]

    @classmethod
    def build(cls, tokenizer, class_names: Sequence[str], views: int) -> "PromptTemplate":
        names = class_display_names(class_names)
        head = PROMPT_HEAD.format(classes=", ".join(names))
        texts = [head + PROMPT_VIEW[0].format(hop=1)]
        texts += [PROMPT_VIEW[1].format(hop=t + 1) for t in range(1, views)]
        texts.append(PROMPT_TAIL)
        # the first piece gets the special tokens the tokenizer itself adds (Llama-2: <s>; SmolLM2: none)
        pieces = [tokenizer(t, add_special_tokens=i == 0)["input_ids"] for i, t in enumerate(texts)]
        return cls(pieces, answer_ids(tokenizer, class_names))

    def length(self, k: int) -> int:
        """Prompt length in tokens with ``k`` codes per view."""
        return sum(map(len, self.pieces)) + (len(self.pieces) - 1) * k

    def embed(self, embedding, tokens):
        """The prompt's input embeddings.

        Args:
            embedding: the decoder's input embedding module.
            tokens: ``[B, views, K, d]`` graph tokens.

        Returns:
            ``[B, P, d]`` float.
        """
        import torch

        b = tokens.shape[0]
        dev, dtype = embedding.weight.device, embedding.weight.dtype
        tokens = tokens.to(device=dev, dtype=dtype)
        parts = []
        for t, piece in enumerate(self.pieces):
            e = embedding(torch.tensor(piece, dtype=torch.long, device=dev))
            parts.append(e.unsqueeze(0).expand(b, -1, -1))
            if t < tokens.shape[1]:
                parts.append(tokens[:, t])
        return torch.cat(parts, 1)


def answer_ids(tokenizer, class_names: Sequence[str]) -> list[list[int]]:
    """Each class's answer tokens: ``" " + name`` (``_`` as spaces) then EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [tokenizer(" " + n, add_special_tokens=False)["input_ids"] + eos for n in class_display_names(class_names)]
