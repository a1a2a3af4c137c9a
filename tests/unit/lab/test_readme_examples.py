"""The README's lab examples are the ones that work (issue 9): its explain example probes
the path the seed's client calls and its server serves, not `/` (a 404 from the Go mux)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from remora.apps import simple_client, simple_server

README = Path(__file__).resolve().parents[3] / "README.md"


def _explain_examples() -> list[list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    out = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("remora explain source-ip --from"):
                out.append(shlex.split(line))
    return out


def test_the_readme_explain_example_probes_the_path_the_client_calls() -> None:
    examples = _explain_examples()
    assert examples, "the README shows no `remora explain source-ip --from` example"
    client_path = urlsplit(simple_client.DEFAULT_URL).path
    assert client_path == simple_server.PATH == "/common/sauth"
    for argv in examples:
        assert "--path" in argv, f"{' '.join(argv)}: probes / (the server answers 404)"
        assert argv[argv.index("--path") + 1] == client_path
