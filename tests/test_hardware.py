"""Tests for tag_pipeline.hardware: CPU flags and the choice of encoder path (pure, any machine)."""

from __future__ import annotations

import pytest

from tag_pipeline import hardware
from tag_pipeline.hardware import (
    CpuInfo,
    EncoderPath,
    bf16_native,
    check_training_precision,
    choose_encoder_path,
    cpu_info,
    parse_cpuinfo,
)

AVX2 = frozenset({"avx2"})  # AMD EPYC (Zen 2/3) as on the 2-core CI machine
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})  # Cooper Lake, Zen 4
AMX = frozenset({"avx2", "avx512f", "amx_bf16", "amx_int8", "amx_tile"})  # Sapphire Rapids (bf16 via AMX only)
AVX512_NO_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni"})  # Skylake/Cascade Lake server

EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes avx512f
"""
SPR_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16
"""


def _auto(flags, mean_pooled=True, device="cpu", **kw) -> EncoderPath:
    return choose_encoder_path("auto", "auto", device, flags, mean_pooled, **kw)


# --- reading the CPU ----------------------------------------------------------------------------


def test_parse_cpuinfo_reads_the_first_processor_and_keeps_only_the_flags_that_matter():
    epyc = parse_cpuinfo(EPYC_CPUINFO)
    assert epyc.model == "AMD EPYC 7B13"
    assert epyc.flags == {"avx2"}  # processor 1's avx512f is not read; sse, sha_ni... are not kept
    assert epyc.as_dict() == {"model": "AMD EPYC 7B13", "flags": ["avx2"], "source": "/proc/cpuinfo"}
    spr = parse_cpuinfo(SPR_CPUINFO)
    assert spr.as_dict()["flags"] == ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"]
    assert parse_cpuinfo("").flags == frozenset()


def test_cpu_info_without_proc_cpuinfo_falls_back_without_raising(tmp_path):
    info = cpu_info.__wrapped__(str(tmp_path / "no-cpuinfo"))
    assert isinstance(info, CpuInfo) and info.source in ("torch", "unknown") and info.model
    assert not info.flags & set(hardware.BF16_FLAGS)  # torch cannot tell bf16: never claimed
    here = cpu_info()
    assert here is cpu_info()  # read once per process
    assert here.flags <= set(hardware.CPU_FLAGS)


def test_bf16_native_by_flags():
    assert not bf16_native("cpu", AVX2)
    assert not bf16_native("cpu", AVX512_NO_BF16)
    assert bf16_native("cpu", AVX512_BF16) and bf16_native("cpu", AMX)
    assert not bf16_native("mps", AMX)


# --- the choice ---------------------------------------------------------------------------------


def test_auto_on_avx2_only_cpu_is_onnx_fp32_for_mean_pooled_models_else_torch_fp32():
    path = _auto(AVX2)
    assert (path.runtime, path.precision) == ("onnx", "fp32")
    assert "ONNX" in path.reason and "avx2" in path.reason
    assert (_auto(AVX512_NO_BF16).runtime, _auto(AVX512_NO_BF16).precision) == ("onnx", "fp32")
    cls = _auto(AVX2, mean_pooled=False)
    assert (cls.runtime, cls.precision) == ("torch", "fp32") and "mean-pooling" in cls.reason
    no_ort = _auto(AVX2, onnx_available=False)
    assert (no_ort.runtime, no_ort.precision) == ("torch", "fp32") and "onnxruntime" in no_ort.reason
    assert (_auto(frozenset()).runtime, _auto(frozenset()).precision) == ("onnx", "fp32")  # flags unknown


@pytest.mark.parametrize("flags", [AVX512_BF16, AMX], ids=["avx512_bf16", "amx_bf16"])
def test_auto_on_a_cpu_with_native_bf16_is_torch_bf16(flags):
    for mean_pooled in (True, False):
        path = _auto(flags, mean_pooled=mean_pooled)
        assert (path.runtime, path.precision) == ("torch", "bf16")
        assert "native bf16" in path.reason
    # runtime torch with precision auto: bf16 too
    assert choose_encoder_path("torch", "auto", "cpu", flags, True).precision == "bf16"


def test_auto_on_cuda_is_bf16_or_fp16_where_bf16_is_missing():
    assert (_auto(AVX2, device="cuda").runtime, _auto(AVX2, device="cuda").precision) == ("torch", "bf16")
    assert _auto(AVX2, device="cuda:1").precision == "bf16"
    old = _auto(AVX2, device="cuda", cuda_bf16=False)
    assert (old.runtime, old.precision) == ("torch", "fp16") and "without bf16" in old.reason
    assert _auto(AMX, device="mps").precision == "fp32"  # the CPU's flags say nothing about another device


def test_explicit_values_are_honoured():
    cases = {
        ("torch", "fp32", AMX): ("torch", "fp32"),  # fp32 asked for on a bf16 CPU
        ("auto", "fp32", AMX): ("onnx", "fp32"),
        ("torch", "auto", AVX2): ("torch", "fp32"),  # runtime asked for: no ONNX
        ("onnx", "auto", AMX): ("onnx", "fp32"),  # ONNX asked for: no bf16
        ("onnx", "fp32", AVX2): ("onnx", "fp32"),
        ("auto", "bf16", AMX): ("torch", "bf16"),
    }
    for (runtime, precision, flags), want in cases.items():
        path = choose_encoder_path(runtime, precision, "cpu", flags, True)
        assert (path.runtime, path.precision) == want, (runtime, precision, sorted(flags))
    assert choose_encoder_path("torch", "fp32", "cuda", AVX2, True).precision == "fp32"
    assert choose_encoder_path("auto", "fp16", "cuda", AVX2, True).precision == "fp16"


def test_bf16_on_a_cpu_without_it_is_allowed_but_called_emulated():
    for runtime in ("auto", "torch"):
        path = choose_encoder_path(runtime, "bf16", "cpu", AVX2, True)
        assert (path.runtime, path.precision) == ("torch", "bf16")
        assert "emulated" in path.reason and "avx512_bf16" in path.reason and "amx_bf16" in path.reason
    assert "emulated" not in choose_encoder_path("torch", "bf16", "cpu", AVX512_BF16, True).reason


def test_fp16_on_cpu_and_impossible_onnx_requests_are_value_errors_naming_the_field():
    with pytest.raises(ValueError, match=r"lm\.precision='fp16' needs a CUDA device"):
        choose_encoder_path("auto", "fp16", "cpu", AMX, True)
    with pytest.raises(ValueError, match=r"lm\.precision='fp16'"):
        choose_encoder_path("torch", "fp16", "cpu", AVX2, True)
    with pytest.raises(ValueError, match=r"lm\.runtime='onnx' runs on the CPU only"):
        choose_encoder_path("onnx", "auto", "cuda", AVX2, True)
    with pytest.raises(ValueError, match=r"float32 only; got lm\.precision='bf16'"):
        choose_encoder_path("onnx", "bf16", "cpu", AMX, True)
    with pytest.raises(ValueError, match="mean-pooling"):
        choose_encoder_path("onnx", "fp32", "cpu", AVX2, False)
    with pytest.raises(ValueError, match=r"lm\.runtime must be one of 'auto', 'torch', 'onnx'; got 'tensorrt'"):
        choose_encoder_path("tensorrt", "auto", "cpu", AVX2, True)
    with pytest.raises(ValueError, match=r"lm\.precision must be one of .*got 'int8'"):
        choose_encoder_path("auto", "int8", "cpu", AVX2, True)


def test_every_choice_is_concrete():
    for runtime in hardware.RUNTIME_CHOICES:
        for precision in ("auto", "fp32", "bf16"):
            for flags in (AVX2, AVX512_BF16, AMX):
                for mean_pooled in (True, False):
                    try:
                        path = choose_encoder_path(runtime, precision, "cpu", flags, mean_pooled)
                    except ValueError:
                        assert runtime == "onnx"
                        continue
                    assert path.runtime in ("torch", "onnx") and path.precision in ("fp32", "bf16")
                    assert path.runtime == "torch" or path.precision == "fp32"
                    assert path.as_dict() == {"runtime": path.runtime, "precision": path.precision, "reason": path.reason}


# --- fine-tuning precision ----------------------------------------------------------------------


def test_training_bf16_on_cpu_needs_native_bf16():
    for flags in (AVX512_BF16, AMX):
        check_training_precision("bf16", "cpu", flags)  # no error
    for flags in (AVX2, AVX512_NO_BF16, frozenset()):
        with pytest.raises(ValueError, match=r"finetune\.precision='bf16'.*avx512_bf16 or amx_bf16") as err:
            check_training_precision("bf16", "cpu", flags)
        assert "use finetune.precision='fp32'" in str(err.value)
    check_training_precision("bf16", "cuda", AVX2)  # the CPU's flags do not matter on CUDA
    check_training_precision("fp32", "cpu", AVX2)
    with pytest.raises(ValueError, match=r"'fp16' needs a CUDA device"):
        check_training_precision("fp16", "cpu", AMX)
