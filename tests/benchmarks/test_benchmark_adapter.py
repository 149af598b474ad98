"""``python -m amlight benchmark adapter`` on the test suite's shrunken case: plumbing, not numbers."""
import json

import pytest

from amlight.benchmarks.adapter_cost import _sd15_layers, cases, quickstart_adapter
from amlight.cli.commands.benchmark import main


def test_cli_times_adapter_and_unet_row_and_writes_ratios(tmp_path, capsys):
    out = tmp_path / "bench" / "adapter.json"
    assert main(["adapter", "--tiny", "--threads", "1", "--repeats", "1", "--with-before", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "adapter" and record["threads"] == 1 and record["load_average"] is not None
    seen = {(r["dtype"], r["device"]) for r in record["results"]}
    assert {("fp32", "cpu"), ("bf16", "cpu")} <= seen
    for result in record["results"]:
        assert [row["mode"] for row in result["rows"]] == ["forward", "forward+backward"]
        assert result["adapter_parameters"] > 0
        for row in result["rows"]:
            med = row["median_s"]
            assert set(med) == {"unet", "adapter", "adapter_before"} and all(v > 0 for v in med.values())
            assert row["ratio"] == pytest.approx(med["adapter"] / med["unet"])
            assert row["speedup"] == pytest.approx(med["adapter_before"] / med["adapter"])
    table = capsys.readouterr().out
    assert "adapter / UNet row" in table and "tiny-test" in table and str(out) in table
    assert out.with_suffix(".md").read_text().startswith("| case |")


def test_quick_is_forward_only_in_fp32(tmp_path):
    out = tmp_path / "adapter.json"
    assert main(["adapter", "--tiny", "--quick", "--threads", "1", "--repeats", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert {r["dtype"] for r in record["results"]} == {"fp32"}
    assert all([row["mode"] for row in r["rows"]] == ["forward"] for r in record["results"])
    assert all("adapter_before" not in row["median_s"] for r in record["results"] for row in r["rows"])


def test_cases_are_sd15_at_512px_and_the_quickstart_config():
    layers = _sd15_layers()
    assert sum(count for _, count, _ in layers) == 16
    assert {side: sum(c for s, c, _ in layers if s == side) for side, _, _ in layers} == {64: 5, 32: 5, 16: 5, 8: 1}
    sd, quick = cases()
    assert (sd.heads, sd.channels, sd.num_layers, sd.max_resolution, sd.latent) == (8, 16, 3, 32, 64)
    q = quickstart_adapter()
    assert (quick.channels, quick.num_layers, quick.max_resolution) == (
        q["adapter_channels"], q["adapter_layers"], q["max_resolution"])


def test_quickstart_adapter_reads_the_stage2_config(tmp_path):
    config = tmp_path / "stage2.yaml"
    config.write_text("model:\n  init_args:\n    adapter_channels: 12\n    max_resolution: 16\n")
    assert quickstart_adapter(config) == {"adapter_channels": 12, "adapter_layers": 3, "max_resolution": 16}
