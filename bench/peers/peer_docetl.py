"""DocETL: a pipeline of one ``map`` operation, run with its Python API (``DSLRunner``).

The pipeline is DocETL's YAML format (written as JSON, which is YAML) with
``default_lm_api_base`` = the test server. The map's output schema is ``label: enum[spam, ham]``
and ``output.mode: structured_output``, so that DocETL sends the schema as ``response_format``;
its default mode, function calling (``tools``), is not answered by corral.testing.ProviderServer
(see README.md). DocETL caches every LLM call in DOCETL_HOME_DIR/.cache/docetl/llm (run.py sets
DOCETL_HOME_DIR to ``--work``): that cache is how a rerun after a kill gets back what was paid.
"""

from __future__ import annotations

import json
import time

import _peer


def pipeline(rows_json: str, out_json: str, intermediate: str, base_url: str) -> dict[str, object]:
    return {
        "default_model": _peer.MODEL,
        "default_lm_api_base": base_url,
        "datasets": {"sms": {"type": "file", "path": rows_json}},
        "operations": [{
            "name": "classify",
            "type": "map",
            "prompt": _peer.INSTRUCTION + "\n\nMessage: {{ input.text }}",
            "output": {"schema": {"label": "enum[" + ", ".join(_peer.LABELS) + "]"}, "mode": "structured_output"},
        }],
        "pipeline": {
            "steps": [{"name": "classify_sms", "input": "sms", "operations": ["classify"]}],
            "output": {"type": "file", "path": out_json, "intermediate_dir": intermediate},
        },
    }


def main() -> None:
    a = _peer.args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows_json = a.work / "rows.json"
    rows_json.write_text(json.dumps(_peer.read_rows(a.rows)))
    out_json = a.work / "output.json"
    spec = a.work / "pipeline.yaml"
    spec.write_text(json.dumps(pipeline(str(rows_json), str(out_json), str(a.work / "intermediate"), a.base_url), indent=2))

    from docetl.runner import DSLRunner  # after the environment is set: DocETL reads it at import

    t0 = time.perf_counter()
    cost = DSLRunner.from_yaml(str(spec)).load_run_save()
    elapsed = time.perf_counter() - t0
    answers = [(r["id"], r.get("label")) for r in json.loads(out_json.read_text())]
    _peer.write_answers(a.out, answers)
    _peer.report({"elapsed_s": elapsed, "note": "timed by the script around load_run_save(); DocETL reports its cost",
                  "docetl_cost_usd": cost})


if __name__ == "__main__":
    main()
