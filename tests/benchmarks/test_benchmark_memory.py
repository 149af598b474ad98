import json

import pytest
import torch

from amlight.benchmarks.memory_options import CASES, TINY_LAYER, read_layer
from amlight.cli.commands.benchmark import main


def test_cli_measures_every_case_in_its_own_process_and_writes_ratios(tmp_path, capsys):
    out = tmp_path / "mem" / "memory.json"
    assert main(["memory", "--tiny", "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "memory_options" and record["layer"]["tiny"] is True
    cases = record["cases"]
    assert set(cases) == set(CASES)
    for name, case in cases.items():
        assert isinstance(case["peak_bytes"], int) and case["peak_bytes"] >= 0 and case["seconds"] > 0
    for name in ("augmented_chunk", "hard_mask_chunk"):
        assert cases[name]["chunk"] == 16 and cases[name]["max_abs_diff_to_whole"] <= 1e-5
        base = cases[cases[name]["baseline"]]
        assert cases[name]["ratio_to_baseline"] == pytest.approx(cases[name]["peak_bytes"] / base["peak_bytes"])
    assert cases["augmented_bf16"]["dtype"] == "bfloat16" and cases["augmented_bf16"]["baseline"] == "augmented"
    table = capsys.readouterr().out
    assert "hard_mask, attention_chunk 16" in table and "vs without the option" in table and str(out) in table


def test_each_case_computes_what_it_names():
    outputs = {name: read_layer(case, TINY_LAYER, chunk_override=16, measure=False)["output"]
               for name, case in CASES.items()}
    # the conditional row (1) reads the exemplar; the unconditional row (0) is plain in every mode
    for name in ("hard_mask", "adapter", "augmented_bf16"):
        assert torch.allclose(outputs[name][0], outputs["augmented"][0], atol=0.05 if "bf16" in name else 1e-6)
    assert (outputs["hard_mask"][1] - outputs["augmented"][1]).abs().max() > 1e-4
    assert (outputs["adapter"][1] - outputs["augmented"][1]).abs().max() > 1e-4  # the refinement is applied
    assert torch.equal(outputs["hard_mask_chunk"], outputs["hard_mask"])
