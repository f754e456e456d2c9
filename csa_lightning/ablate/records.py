"""What an ablation keeps on disk: each run folder's stamp (the resolved configuration and code it trains
with), its record when it finishes, and ``OUT/results.json``, into which the runner merges the records
(one writer: the runner holding the ablation's lock; a run on another machine writes only into its own
folder). Also the stale check that compares a folder's stamp or a record with the current plan."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..run_folder import AblationFolder, RunFolder, is_done, missing_metric
from .plan import CONFIG_SCHEME, Resolved, Variant

__all__ = ["load_results", "stamp", "finish_record", "folder_records", "merge_records", "stale_variants",
           "keep_stale", "forget"]  # fmt: skip


def load_results(out: Path) -> List[Dict[str, Any]]:
    """The ablation's merged records (``OUT/results.json``) of the runs that are done, or [] before the
    first run finishes. A record without its metric (an earlier runner merged one) is left out: its
    variant is not done and runs again."""
    path = AblationFolder(out).results
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is corrupt ({err}); restore it or move it away to start the ablation afresh"
        ) from None
    return [r for r in records if is_done(r)]


def _write_results(out: Path, records: List[Dict[str, Any]]) -> None:
    path = AblationFolder(out).results
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2))
    os.replace(tmp, path)  # atomic: a kill leaves the old file or the new one


def stamp(run_dir: Path, variant: Variant, resolved: Resolved) -> None:
    """What a run folder's checkpoints are trained with (a later runner resumes them only if it
    matches), and what its record needs, so that a run on another machine writes the record itself."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunFolder(run_dir)
    run.config_hash.write_text(f"{CONFIG_SCHEME}:{resolved.hash}")
    run.config_resolved.write_text(json.dumps(resolved.config, indent=1, sort_keys=True))
    run.code.write_text(json.dumps(resolved.code, indent=1, sort_keys=True))
    about = {"variant": variant.name, "group": variant.group, "attention": variant.attention,
             "sweep": variant.sweep, "seed": variant.seed}  # fmt: skip
    run.variant.write_text(json.dumps(about, indent=1))


def finish_record(run_dir: Path, wall: float) -> Dict[str, Any]:
    """The record of a finished run, from its folder alone, written to its ``record.json``
    (atomically): the variant, its resolved configuration and code, the result, the attempts.
    A result that is not done (`csa_lightning.run_folder.result.is_done`) makes no record: a
    ValueError says why, and the run counts as failed (a re-run trains or evaluates it again)."""
    from ..run_folder import read_attempts, redone_steps
    from ..tasks.callbacks import describe_run

    run = RunFolder(Path(run_dir))
    result = json.loads(run.result.read_text()) if run.result.exists() else None
    if not is_done(result):
        raise ValueError(f"{run.name} ended without its result: {missing_metric(result)}")
    about = json.loads(run.variant.read_text())
    scheme, _, config_hash = run.config_hash.read_text().strip().rpartition(":")
    record = {
        **about,
        "config_scheme": int(scheme),
        "config_hash": config_hash,
        "config": json.loads(run.config_resolved.read_text()),
        "code": json.loads(run.code.read_text()),
        **(result or {}),
        "wall_s": round(wall, 1),
        "git_commit": describe_run()["git_commit"],
        "attempts": redone_steps(read_attempts(run.path)),
    }
    tmp = run.record.with_name(f".{run.record.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, run.record)
    return record


def folder_records(out: Path) -> List[Dict[str, Any]]:
    """The records the run folders hold (finished runs, merged into results.json or not yet); a record
    that is not done (written before "done" was checked: no metric) is not a finished run's."""
    records = []
    for path in AblationFolder(out).records():
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue  # written atomically: a broken one is not a finished run's
        if is_done(record):
            records.append(record)
    return records


def merge_records(out: Path) -> List[Dict[str, Any]]:
    """results.json with every run folder's record it does not hold yet (only the runner, holding the
    ablation's lock, writes results.json; runs elsewhere write their own folder's record)."""
    records = load_results(out)
    known = {r["variant"] for r in records}
    added = [r for r in folder_records(out) if r.get("variant") not in known]
    if added:
        records += added
        _write_results(out, records)
    return records


def stale_variants(out: Path, variants: Sequence[Variant], resolved: Dict[str, Resolved]) -> Dict[str, str]:
    """Variants whose finished result or started run folder came from another resolved
    configuration: {name: what differs, in words}."""
    from ..config_diff import differences
    from ..provenance import changed_files, changed_named_files

    recorded = {r["variant"]: r for r in load_results(out)}
    stale = {}
    for v in variants:
        now = resolved[v.name]
        record = recorded.get(v.name)
        run = AblationFolder(out).run(v.name)
        if record is not None:
            then_scheme, then_hash = record.get("config_scheme"), record.get("config_hash")
            then_config, then_code = record.get("config"), record.get("code")
        elif run.config_hash.exists():
            scheme, _, then_hash = run.config_hash.read_text().strip().rpartition(":")
            then_scheme = int(scheme) if scheme.isdigit() else None
            then_config = json.loads(run.config_resolved.read_text()) if run.config_resolved.exists() else None
            then_code = json.loads(run.code.read_text()) if run.code.exists() else None
        else:
            continue
        if then_scheme != CONFIG_SCHEME:
            stale[v.name] = "recorded by an earlier runner, which hashed the config file's text only"
        elif then_hash != now.hash:
            changed = differences(then_config, now.config) if then_config is not None else []
            listed = "; ".join(f"{key}: {a!r} then, {b!r} now" for key, a, b in changed[:2])
            stale[v.name] = listed or "another configuration"
        elif then_code is None:
            stale[v.name] = "recorded by an earlier runner, which did not record the code a run uses"
        else:
            changed = changed_files(then_code.get("files"), now.code["files"])
            then_files, files = then_code.get("named_files") or {}, now.code.get("named_files") or {}
            changed_weights = changed_named_files(then_files, files)
            if changed:
                stale[v.name] = f"code changed in {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}"
            elif "named_files" not in then_code and files:
                stale[v.name] = "recorded by an earlier runner, which did not hash the weights files the config names"
            elif changed_weights:
                key = changed_weights[0]
                path = (files.get(key) or then_files.get(key) or {}).get("path")
                stale[v.name] = f"the file {key} names ({path}) changed since it ran (content hash)"
    return stale


def keep_stale(out: Path, variants: Dict[str, Variant], resolved: Dict[str, Resolved], names: Sequence[str]) -> None:
    """--keep-stale: adopt ``names``' results and run folders as made by the current configuration."""
    records = load_results(out)
    for r in records:
        if r["variant"] in names:
            r.update(config_scheme=CONFIG_SCHEME, config_hash=resolved[r["variant"]].hash,
                     config=resolved[r["variant"]].config, code=resolved[r["variant"]].code)  # fmt: skip
    _write_results(out, records)
    for name in names:
        run_dir = AblationFolder(out).run(name).path
        if run_dir.is_dir():  # its folder (its record included) now counts as current
            stamp(run_dir, variants[name], resolved[name])


def forget(out: Path, names: Sequence[str]) -> None:
    """Drop the results and run folders (their checkpoints would be resumed) of ``names``."""
    import shutil

    _write_results(out, [r for r in load_results(out) if r["variant"] not in set(names)])
    for name in names:
        shutil.rmtree(AblationFolder(out).run(name).path, ignore_errors=True)
