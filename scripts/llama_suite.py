"""Helpers for scripts/llama-server-suite.sh, which runs llama.cpp's own server
tests against llama-server and against the Cactus router.

As a pytest plugin (`-p llama_suite`, with this directory and the suite's
tests directory on PYTHONPATH) it sends the suite's OpenAI endpoints to their
`/v1/...` paths: llama-server answers both `/chat/completions` and
`/v1/chat/completions`, the router only the latter, and the comparison is
about what the endpoints answer, not where they live. Every other path
(`/tokenize`, `/apply-template`, ...) is left as the test wrote it. With
CACTUS_API_KEY set (the router's run), every request the suite makes, through
`requests` or through the OpenAI client's `httpx`, carries that key as
`Authorization: Bearer`: the router charges a key's account, llama-server
needs none.

As a program, `python3 llama_suite.py table <llama-server.xml> <router.xml>`
prints a Markdown table of both runs' JUnit reports: one row per test, its
result on each server, and the first line of the router's failure.
"""

import os
import sys
import xml.etree.ElementTree as ET

# The suite's OpenAI-compatible endpoints, which are served under /v1.
OPENAI_PATHS = ("/chat/completions", "/completions", "/models", "/embeddings")


def pytest_configure(config):
    """Prefixes the suite's OpenAI paths with /v1 (see the module's doc)."""
    import utils  # the suite's own helpers, importable from its tests dir

    original = utils.ServerProcess.make_url

    def make_url(self, path, host=None):
        if path in OPENAI_PATHS:
            path = "/v1" + path
        return original(self, path, host)

    utils.ServerProcess.make_url = make_url

    key = os.environ.get("CACTUS_API_KEY")
    if key:
        authorize_everything(key)


def authorize_everything(key):
    """Sends `key` with every HTTP request made through requests or httpx."""
    import httpx
    import requests

    bearer = f"Bearer {key}"
    send_requests = requests.Session.request

    def request(self, method, url, **kwargs):
        kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": bearer}
        return send_requests(self, method, url, **kwargs)

    requests.Session.request = request
    for cls in (httpx.Client, httpx.AsyncClient):
        send_httpx = cls.send

        def send(self, req, *args, _send=send_httpx, **kwargs):
            req.headers["Authorization"] = bearer
            return _send(self, req, *args, **kwargs)

        cls.send = send


def results(path):
    """{test id: (result, first line of the failure)} from a JUnit XML report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        test_id = f"{module}::{case.get('name')}"
        outcome, why = "pass", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAIL", "error": "ERROR", "skipped": "skip"}[tag]
                why = (node.get("message") or node.text or "").strip().splitlines()
                why = why[0] if why else ""
                break
        out[test_id] = (outcome, why)
    return out


def cell(text, limit=110):
    """Text fit for one Markdown table cell."""
    text = text.replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(llama_xml, router_xml):
    llama, router = results(llama_xml), results(router_xml)
    print("| test | llama-server | router | router failure (first line) |")
    print("|---|---|---|---|")
    for test_id in list(llama) + [t for t in router if t not in llama]:
        l_result = llama.get(test_id, ("absent", ""))[0]
        r_result, why = router.get(test_id, ("absent", ""))
        print(f"| `{test_id}` | {l_result} | {r_result} | {cell(why) if r_result != 'pass' else ''} |")
    for name, res in (("llama-server", llama), ("router", router)):
        passed = sum(1 for r, _ in res.values() if r == "pass")
        print(f"\n{name}: {passed} of {len(res)} passed", end="")
    print()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "table":
        sys.exit("usage: llama_suite.py table <llama-server.xml> <router.xml>")
    table(sys.argv[2], sys.argv[3])
