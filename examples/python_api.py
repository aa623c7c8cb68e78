"""Corral from Python: build a job, run it, run it again, read the summary.

Run it with:  .venv/bin/python examples/python_api.py

It writes a small CSV to a temporary folder and runs a two-step job on it with ``FakeModel``, the
scripted model that ships with Corral (no model file, no network, instant). Then it runs the same
job again: the rerun resumes the same run and replays the recorded answers, so the model is not
called at all. Everything it writes, the store included, stays in the temporary folder.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import corral

ROWS = """\
ticket_id,subject,body
T-1,Charged twice,I was billed twice for order ORD-1001. Please refund $25.
T-2,Where is my parcel,Order ORD-1002 was due on Monday and has not arrived.
T-3,Cannot log in,The app says my password is wrong even after a reset.
"""

JOB = {
    "name": "tickets-api-demo",
    "source": "tickets.csv",  # relative to base_dir, like paths in a job file
    "key": "ticket_id",
    "steps": [
        {
            "name": "category",
            "task": "classify",
            "input": "Subject: {subject}\n\n{body}",
            "labels": {
                "billing": "Charges, payments, invoices and refunds",
                "shipping": "Delivery and tracking",
                "account": "Login, password and profile",
            },
        },
        {
            "name": "details",
            "task": "extract",
            "input": "{body}",
            "fields": {
                "order_id": {"type": "string", "nullable": True},
                "amount": {"type": "number", "nullable": True},
            },
        },
    ],
    "sink": "out/tickets.jsonl",
    "budget": {"max_calls": 100},
}


def answer(request: corral.Request) -> dict[str, Any]:
    """Scripted answers for FakeModel: a stand-in for a real model in tests."""
    text = request.messages[-1].content
    if "label" in request.schema["properties"]:  # the classify step
        lower = text.lower()
        if "billed" in lower or "refund" in lower:
            return {"label": "billing"}
        return {"label": "shipping" if "order" in lower else "account"}
    order = re.search(r"ORD-\d+", text)  # the extract step
    amount = re.search(r"\$(\d+(?:\.\d+)?)", text)
    return {
        "order_id": order.group(0) if order else None,
        "amount": float(amount.group(1)) if amount else None,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tickets.csv").write_text(ROWS, encoding="utf-8")
        job = corral.Job.from_dict(JOB, base_dir=folder)
        store = folder / "corral.db"  # default: $CORRAL_STORE or .corral/corral.db

        model = corral.FakeModel(script=answer)
        result = corral.run(job, model=model, store=store)
        print(json.dumps(result.to_json(), indent=2))
        assert result.status == "finished" and result.accounted
        print(f"model calls: {model.calls}")

        # Same job, same input, same model id: the same run. Nothing is pending, and every
        # answer would be replayed from the store, so the new model instance is never called.
        again = corral.FakeModel(script=answer)
        rerun = corral.run(job, model=again, store=store)
        print(f"rerun of run {rerun.run}: {rerun.status}, model calls: {again.calls}")

        for line in (folder / "out" / "tickets.jsonl").read_text(encoding="utf-8").splitlines():
            print(line)


if __name__ == "__main__":
    main()
