"""The benchmark tooling end to end: `benchmarks/run_all.py --quick` on a tiny random model runs
every benchmark (real node processes on a local Anvil, the verifier's audits, the
calibration) and writes a page with every section, each with its command and its figures; the
saved results render the same page again without measuring. A smoke test of the tooling: no
timing is asserted (timing belongs in the benchmarks themselves).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECTIONS = {
    # title -> the script whose command the section shows (None: it shares the one above)
    "Targets and headline figures": None,
    "Decode latency and prefill throughput through 1, 2 and 3 servers": "bench_node.py",
    "Commitment overhead": None,
    "Client: generate through the swarm against local Hugging Face generate": "bench_client.py",
    "Gas per 1,000 generated tokens": None,
    "Generate through 1, 2 and 3 servers, near and far apart": "bench_route.py",
    "Resident memory per node against blocks served": "bench_memory.py",
    "Verifier: audit cost against serving cost": "bench_verifier.py",
    "Detection against sample rate": None,
    "Calibration of the audit thresholds": "calibrate.py",
}
NUMBER = re.compile(r"\d+(\.\d+)?")


def sections(page: str) -> dict[str, str]:
    """Level-2 title -> the text under it."""
    parts = re.split(r"^## (.+)$", page, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def table_rows(body: str) -> list[list[str]]:
    """The data rows of every Markdown table in `body` (header and rule left out)."""
    rows, previous = [], ""
    for line in body.splitlines():
        if line.startswith("|") and not line.startswith("|---") and previous.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-| "):
                rows.append(cells)
        previous = line if line.startswith("|") else ""
    return [row for row in rows if row]


def run_all(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/run_all.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_quick_run_writes_every_section_with_figures_and_renders_again(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path, "llama", 6)
    page_file, results_file = tmp_path / "benchmarks.md", tmp_path / "results.json"
    done = run_all(
        "--quick", "--in-process", "--model", str(model),
        "--output", str(page_file), "--results", str(results_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    page = page_file.read_text()

    assert "Quick smoke pass" in page
    found = sections(page)
    assert list(found)[: len(SECTIONS)] == list(SECTIONS)
    for title, script in SECTIONS.items():
        body = found[title]
        if script is not None:
            assert f"benchmarks/{script} --model {model}" in body, title
            assert re.search(r"Ran \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC for \d+ s", body), title
        rows = table_rows(body)
        assert rows, f"no table under {title!r}"
        for row in rows:
            assert any(NUMBER.search(cell) for cell in row[1:]), f"{title}: {row}"
        assert not re.search(r"\bnan\b", body, flags=re.IGNORECASE), title

    targets = table_rows(found["Targets and headline figures"])
    statuses = {row[0]: row[2] for row in targets}
    for name in ("1 server", "2 servers", "3 servers"):
        status = statuses[f"distributed decode within 1.2x of local: {name}"]
        assert status.startswith(("met", "**missed**", "**not resolved**")), status
    assert any(key.startswith("commitments add under 2%") for key in statuses)

    decode = {row[0]: row for row in table_rows(found[list(SECTIONS)[1]])}
    assert {"1 server", "2 servers", "3 servers", "1 server, no commitments"} <= set(decode)
    assert decode["3 servers"][1] == "0:2, 2:4, 4:6"

    gas_rows = table_rows(found["Gas per 1,000 generated tokens"])
    servers = [row for row in gas_rows if row[0].startswith("node-")]
    assert len(servers) == 3
    for row in servers:  # every server committed batches and redeemed its channel
        commits, redemptions = row[1], row[3]
        assert re.fullmatch(r"[1-9]\d* × [\d,]+", commits), row
        assert re.fullmatch(r"1 × [\d,]+", redemptions), row
    total = next(row for row in gas_rows if "all servers" in row[0])
    assert int(total[4].strip("*").replace(",", "")) > 0

    memory = table_rows(found["Resident memory per node against blocks served"])
    assert [row[0] for row in memory] == ["1", "6"]
    detection = table_rows(found["Detection against sample rate"])
    assert len(detection) == 12  # 3 sample rates x 4 counts of cheated leaves
    calibration = table_rows(found["Calibration of the audit thresholds"])
    assert sum("declared" in row[0] for row in calibration) >= 9

    data = json.loads(results_file.read_text())
    assert data["quick"] is True
    assert {"node", "client", "route", "memory", "verifier", "calibration"} <= set(data)

    again = tmp_path / "again.md"
    rendered = run_all("--render", "--output", str(again), "--results", str(results_file))
    assert rendered.returncode == 0, rendered.stderr[-4000:]
    assert again.read_text() == page


def test_a_bad_option_is_refused_with_its_reason() -> None:
    refused = run_all("--only", "node,gpu")
    assert refused.returncode == 2
    assert "unknown benchmark(s) gpu" in refused.stderr
    bench = subprocess.run(
        [sys.executable, "benchmarks/bench_node.py", "--rounds", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bench.returncode == 2
    assert "--rounds must be at least 1" in bench.stderr


def test_the_training_benchmark_runs_a_step_both_ways_and_prints_its_table(
    tmp_path: Path,
) -> None:
    result = tmp_path / "training.json"
    done = subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "benchmarks" / "bench_training.py"),
            "--model", "tiny", "--servers", "1", "--batch", "2", "--length", "8",
            "--rounds", "1", "--json", str(result),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = json.loads(result.read_text())["rows"][0]
    assert row["servers"] == 1 and row["swarm_ms"]["median"] > 0 and row["local_ms"]["median"] > 0
    assert row["same_loss"]  # the swarm trained exactly as the local model did
    assert "| 1 server |" in done.stdout and "tokens trained/s" in done.stdout
