"""vLLM's OpenAI server started as the README says, with SIA requests through the openai client.

Loopback only; bounded waits; the server is killed at the end."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

START_TIMEOUT_S = 240

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(models["base"]),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "128", "--max-num-seqs", "8", "--seed", "0",
           "--logits-processors", "sia_kernels.integrations.vllm:SIALogitsProcessor",
           "--additional-config", json.dumps({"sia": {"value_model": str(models["value"])}})]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

def complete(client, model, xargs=None, n=6):
    r = client.completions.create(model=str(model), prompt="w5 w6 w7 w8", max_tokens=n, temperature=0.0,
                                  extra_body={"ignore_eos": True, **({"vllm_xargs": xargs} if xargs else {})})
    return r.choices[0].text

def test_server_serves_sia_requests_and_answers_bad_options_with_400(server, models, sia_llm):
    from vllm import SamplingParams

    opts = {"tau": "-inf", "beta": 2.0, "k": 4}
    got = complete(server, models["base"], {f"sia_{k}": v for k, v in opts.items()})
    want = sia_llm.generate(["w5 w6 w7 w8"], SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True,
                                                            extra_args={"sia": opts}), use_tqdm=False)
    assert got == want[0].outputs[0].text  # the same tokens as the offline engine
    assert got != complete(server, models["base"])  # steering changed the text
    for bad in ({"sia_tau": "nan"}, {"sia_k": 0}, {"sia_temperatur": 1.0}, {"sia_beta": "inf"}):
        with pytest.raises(openai.BadRequestError) as e:
            complete(server, models["base"], bad)
        assert e.value.status_code == 400
    assert complete(server, models["base"], {"sia_tau": 1.0, "sia_k": 5}) != ""  # still serving
