"""Named pipelines: a file of pipelines a webhook starts by name (`"pipeline": "digest"`).

The file (ORCHESITY_PIPELINES_FILE, default `pipelines.json`, absent means none) is
`{"pipelines": {"<name>": {"steps": [...]}, ...}}`. Every pipeline is parsed when the
file is read, so one it cannot use stops `orchesity serve` from starting with every
problem named (pipeline, step, field); its tools are checked against the registry when
a run starts, since registered tools change while the server runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.runs.pipeline import Pipeline, RunInvalid, parse
from core.settings import Settings, SettingsError, read_json_file


class PipelinesFileError(SettingsError):
    """A pipelines file Orchesity cannot use; the message lists every problem."""


def read_pipelines_file(path: Path) -> dict[str, Pipeline]:
    where = f"pipelines file {path}"
    document = read_json_file(path, where, PipelinesFileError)
    named = document.get("pipelines") if isinstance(document, dict) else None
    if not isinstance(named, dict) or set(document) - {"pipelines", "$schema"}:
        raise PipelinesFileError(f"{where}: expected {{\"pipelines\": {{\"<name>\": {{\"steps\": [...]}}}}}}")
    pipelines, problems = {}, []
    for name, body in named.items():
        try:
            pipeline = parse({"name": name, **body} if isinstance(body, dict) else body)
        except RunInvalid as exc:
            problems += [f"{name}: {problem}" for problem in exc.problems]
            continue
        pipelines[name] = pipeline
    if problems:
        raise PipelinesFileError(f"{where}:\n  " + "\n  ".join(problems))
    return pipelines


def named_pipelines(settings: Settings) -> dict[str, Pipeline]:
    """The pipelines of ORCHESITY_PIPELINES_FILE; at the default path, a missing file means none."""
    path = settings.ORCHESITY_PIPELINES_FILE
    explicit = "ORCHESITY_PIPELINES_FILE" in settings.model_fields_set
    if path is None or (not explicit and not path.exists()):
        return {}
    return read_pipelines_file(path)


_INPUT = re.compile(r"\binputs\.([A-Za-z_][A-Za-z0-9_]*)")


def input_names(pipeline: Pipeline) -> list[str]:
    """The inputs a pipeline's templates read (`{{ inputs.text }}`), in order of first use:
    what a form starting it should ask for."""
    found = _INPUT.findall(json.dumps(pipeline.model_dump(mode="json", exclude_none=True)))
    return list(dict.fromkeys(found))
