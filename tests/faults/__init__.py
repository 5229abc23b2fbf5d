"""The fault suite (issue 5): reliability and security under load, faults and hostile input.

Every scenario runs against the real server process (``python -m sse_notify serve``) and
prints one ``FIGURES <scenario> key=value ...`` line. Scenarios 1 (crash), 2 (reconnect
race), 6 (hostile input) and 7 (isolation) run in a short form with the normal test
command; scenarios 3 (slow consumers), 4 (churn) and 5 (soak) exist only in a long form.

    .venv/bin/python -m pytest -p no:cacheprovider tests/faults            # short forms
    .venv/bin/python -m pytest -p no:cacheprovider tests/faults --long     # long forms

The long forms append each figure line to ``tests/faults/results/figures.jsonl``;
``python -m tests.faults.report`` turns the latest of each into the README's table.
"""
