"""The OpenAI-compatible path against a real llama.cpp server serving the bundled model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ..conftest import corral_bin, write

pytest.importorskip("llama_cpp.server")
pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_openai_model_against_llama_cpp_server(tmp_path):
    from corral.models.local import bundled_gguf_path

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf_path()),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("llama.cpp server did not start")
                time.sleep(0.5)
        write(tmp_path / "in.csv", "id,text\n1,I was charged twice for my order\n2,My parcel never arrived\n3,The app crashes on start\n")
        write(tmp_path / "job.yaml", f"""\
name: llama-server
source: in.csv
key: id
model:
  name: "openai:smollm2"
  base_url: "http://127.0.0.1:{port}/v1"
  api_key: "not-needed"
  timeout_s: 120
steps:
  - name: category
    task: classify
    input: "{{text}}"
    labels: [billing, shipping, technical]
sink: out/o.csv
""")
        p = subprocess.run([corral_bin(), "run", "job.yaml", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        s = json.loads(p.stdout)
        assert s["rows"]["in"] == 3 and s["rows"]["pending"] == 0
        assert s["rows"]["written"] + s["rows"]["quarantined"] == 3
        assert s["calls"]["made"] >= 3 and s["tokens"]["input"] > 0
        out = (tmp_path / "out" / "o.csv").read_text()
        for line in out.splitlines()[1:]:
            assert line.rsplit(",", 1)[1] in {"billing", "shipping", "technical"}
    finally:
        server.terminate()
        server.wait(timeout=30)
