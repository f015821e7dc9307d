"""The results file's own names: where the harness's sections sit inside a pytest-benchmark JSON.

The one place both sides read them from: the pytest plugin writes under these keys, the
reporting side reads them. No torch, no pytest.
"""

RESULTS_KEY = "lstm_harness"  # machine_info[RESULTS_KEY]: the environment; output[RESULTS_KEY]: the run
