"""TAPE (He et al., ICLR 2024): the library's own stages (LLM answers, features, GNNs, h_TAPE); only its config lives here."""

from tag_pipeline.methods.tape.config import TapeMethod as TapeMethod
