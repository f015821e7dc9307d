"""The README's worked example of adding an implementation must keep working as written."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # not imported from conftest: suites/ has one too


def test_readme_example_is_validated_and_timed_with_no_other_change(run_python, tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n# my_lstm\.py\n(.*?)```", readme, re.S)
    assert code, "README lost its worked example"
    (tmp_path / "my_lstm.py").write_text(code.group(1))
    out = tmp_path / "r.json"
    proc = run_python("-m", "pytest", "suites/test_speed.py", "--benchmark-only", "--lstm-grid", "smoke",
                      "--lstm-plugin", "my_lstm", "--lstm-impls", "cell_loop,fused", "--lstm-rounds", "2",
                      "--benchmark-json", str(out), f"--benchmark-storage=file://{tmp_path}",
                      "-p", "no:cacheprovider", "-q", extra_path=[tmp_path])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "24 passed" in proc.stdout
    impls = {b["extra_info"]["impl"] for b in json.loads(out.read_text())["benchmarks"]}
    assert impls == {"cell_loop", "fused"}
    report = run_python("-m", "harness.report", str(out), "--out-dir", str(tmp_path), "--baseline", "fused")
    assert report.returncode == 0 and "| cell_loop " in report.stdout
