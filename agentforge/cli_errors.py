"""One ``error:`` line for what Hydra refuses before a run starts: a misspelled key or group, an unknown group
option, an override that does not parse.

Hydra reports these itself, over several lines (the search path, a hint about HYDRA_FULL_ERROR) with exit 1.
``python -m agentforge`` runs Hydra with ``HYDRA_FULL_ERROR=1``, under which Hydra re-raises instead of
reporting; ``hydra_error_line`` turns the exception into the same kind of line every other bad input gets
(exit 2). Everything else that escapes is a bug, and its full traceback is what a user needs to report it.
"""
from __future__ import annotations

import os
import re
import shlex
import sys

from hydra.errors import HydraException

NO_KEY = re.compile(r"Could not override '([^']+)'")
FULL_KEY = re.compile(r"full_key: (\S+)")


def hydra_error_line(exc: HydraException) -> str:
    """The message of a Hydra composition / override error on one line, naming the key and what to do."""
    cause = str(exc.__cause__ or "").splitlines()
    m = NO_KEY.search(str(exc))
    if m and cause and "not in struct" in cause[0]:
        key = m.group(1)
        full = FULL_KEY.search(str(exc.__cause__))
        if full and full.group(1) != key:  # a mapping value with a key the default lacks: name that key
            return (f"{full.group(1)}: no such key in {key} (its default lacks it); write +{key}=... to set keys "
                    f"the default lacks")
        parent, _, name = key.rpartition(".")
        near = close_keys(name, getattr(exc.__cause__, "parent_node", None), parent)
        add = "" if closed(key) else f"; +{key}=VALUE adds a new one"
        return f"{key}: no such key ({near}check its spelling; `python -m agentforge --cfg job` prints every key{add})"
    lines, options = [], []
    for line in str(exc).splitlines():
        if line.startswith("Config search path:"):
            break                                   # the rest lists where Hydra looked: no help to a typo
        if line.startswith("\t"):
            options.append(line.strip())            # "Available options in 'model':" then one per line
        elif line.strip():
            lines.append(line.strip())
    text = "; ".join(lines)
    if options:
        text += " " + ", ".join(options)
    if cause and cause[0] not in text:
        text += f" ({cause[0]})"
    return text


def close_keys(name: str, node, parent: str) -> str:
    """"did you mean PARENT.KEY? " for the keys of the mapping ``node`` (at ``parent``) that look like ``name``
    (difflib), or ""."""
    import difflib

    try:
        keys = [str(k) for k in node.keys() if str(k) != name]
    except Exception:   # not a mapping (or none)
        return ""
    near = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(name, keys, n=3, cutoff=0.6)]
    return f"did you mean {' or '.join(near)}? " if near else ""


# mappings whose keys a user adds with +KEY=VALUE (each read by its phase, or checked by its own start-up rule)
OPEN_MAPPINGS = ("data.eval_paths", "data.benchmark_paths", "phase.overrides", "phase.thresholds",
                 "phase.fitness_weights", "phase.curriculum")
CLOSED_GROUPS = ("phase", "model", "optimizer", "hardware", "size", "data", "baseline")


def closed(key: str) -> bool:
    """A key of a config group whose settings are all in its defaults (so a new one is a typo), ``CLOSED_GROUPS``
    but not ``OPEN_MAPPINGS``."""
    return ("." in key and key.split(".")[0] in CLOSED_GROUPS
            and not any(key == m or key.startswith(m + ".") for m in OPEN_MAPPINGS))


def top_level_keys() -> set[str]:
    """The top-level keys of the config: those of ``conf/config.yaml`` and its groups (``defaults``), read from the
    file (not composed: ``+foo=1`` adds ``foo`` to the composed config)."""
    from omegaconf import OmegaConf

    from agentforge.main import CONF_DIR

    primary = OmegaConf.load(os.path.join(CONF_DIR, "config.yaml"))
    groups = set()
    for entry in primary.get("defaults", []):
        name = next(iter(entry)) if not isinstance(entry, str) else entry
        groups.add(str(name).removeprefix("optional ").split("@", 1)[0].split("/", 1)[0])
    return (set(primary) | groups) - {"defaults", "hydra", "_self_"}


def added_key_problem(cfg, overrides: list[str], defaults=None) -> str | None:
    """Why a ``+KEY=VALUE`` override is refused, or None: Hydra adds any key given with ``+``, so a misspelled setting
    of a config group (``+phase.epocs=2``) ran with the setting ignored while ``config_resolved.yaml`` recorded it.
    Allowed: keys under ``OPEN_MAPPINGS`` and outside ``CLOSED_GROUPS`` (e.g. ``+logger.api_key``). ``++KEY`` sets
    a key whether or not it exists, so it is refused when ``defaults`` (the config composed without the ``++``
    overrides; None: not known) lacks the key. ``experiment_phase`` is internal: ``experiment=X`` picks it."""
    from omegaconf import OmegaConf

    for override in overrides:
        if override.lstrip("+~").split("=", 1)[0] == "experiment_phase":
            return (f"{override.lstrip('+~')}: experiment_phase is internal (experiment=X adds X_<phase> for the phase "
                    f"that runs, e.g. smoke_{cfg.phase.name}); give experiment=X instead")
        if override.startswith("~"):
            problem = removed_key_problem(override)
            if problem:
                return problem
            continue
        if not override.startswith("+"):
            continue
        sign = "++" if override.startswith("++") else "+"
        key = override[len(sign):].split("=", 1)[0]
        top = key.split(".", 1)[0]
        if top not in top_level_keys():   # +foo=1, +sede=3: a new top-level key, read by nothing
            near = close_keys(top, dict.fromkeys(top_level_keys()), "")
            return (f"{sign}{key}: {top} is no setting of the config, so nothing would read it ({near}`python -m "
                    f"agentforge --cfg job` prints every key)")
        if not closed(key):
            continue
        lookup = cfg if sign == "+" else defaults   # a + key is new by Hydra's rule; a ++ key when the defaults lack it
        if lookup is None or (sign == "++" and OmegaConf.select(lookup, key, default="<absent>") != "<absent>"):
            continue
        parent, name = key.rsplit(".", 1)
        what = f"phase={cfg.phase.name}" if parent == "phase" else parent
        return (f"{sign}{key}: {what} has no such setting, so nothing would read it "
                f"({close_keys(name, OmegaConf.select(lookup, parent), parent)}`python -m agentforge "
                f"phase={cfg.phase.name} --cfg job` prints every key)")
    return None


def removed_key_problem(override: str) -> str | None:
    """Why a ``~KEY`` override is refused, or None. Every key of the composed defaults is read by something (a start-up
    rule, a phase, the run's bookkeeping): removed, it failed deep in a run with a traceback and a run dir holding
    only ``agentforge.log`` (``~phase.max_epochs``, ``~seed``), or silently ran on a code default
    (``~model.d_model``). Allowed: an entry of a mapping a user fills (``OPEN_MAPPINGS``, e.g.
    ``~data.eval_paths.gsm8k``), and Hydra's own settings (``~hydra.*``, left to Hydra)."""
    key = override.lstrip("~").split("=", 1)[0].strip()
    if key == "hydra" or key.startswith(("hydra.", "hydra/")) or any(key.startswith(m + ".") for m in OPEN_MAPPINGS):
        return None
    return f"{key}: required; remove the ~{key} override (to change the value, give {key}=VALUE)"


CHDIR = ("hydra.job.chdir=true: not supported: the run would start inside its run directory, where paths.outputs and "
         "every relative data or checkpoint path would be looked up, so its artifacts would land there and the next "
         "phase would not find them; leave it false and choose where runs go with paths.outputs (AGENTFORGE_OUTPUTS) "
         "or hydra.run.dir")


def chdir_problem(argv: list[str]) -> str | None:
    """``CHDIR`` when the command line turns on ``hydra.job.chdir`` (checked before Hydra makes the run dir; the
    start-up checks catch it again, e.g. in a sweep's value list)."""
    for a in argv:
        key, _, value = a.lstrip("+").partition("=")
        if key == "hydra.job.chdir" and value.strip().lower() in ("true", "yes", "on", "1"):
            return CHDIR
    return None


def outputs_problem(argv: list[str], env: dict) -> str | None:
    """Why the outputs directory (``paths.outputs=`` on the command line, else ``AGENTFORGE_OUTPUTS``, else
    ``outputs``) cannot hold runs, or None. Checked before Hydra starts: Hydra creates the run directory in its own
    code, where a file or an unwritable path in the way was a 29-line traceback (exit 1)."""
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.outputs=")]
    path = given[-1] if given else env.get("AGENTFORGE_OUTPUTS") or "outputs"
    key = "paths.outputs" if given else ("AGENTFORGE_OUTPUTS" if env.get("AGENTFORGE_OUTPUTS") else "the default")
    if "${" in path:   # an interpolation: Hydra resolves it, and reports what it cannot
        return None
    problem = writable_problem(path)
    if problem:
        return f"{key} = {path!r} {problem}: point AGENTFORGE_OUTPUTS or paths.outputs at a writable directory"
    for sub in ("runs", "multirun"):   # where Hydra makes the run dirs (conf/config.yaml): a file there was a traceback
        inner = os.path.join(path, sub)
        if os.path.lexists(inner) and not os.path.isdir(inner):
            return (f"{key} = {path!r}: {inner!r} is not a directory (Hydra puts the run directories there): move "
                    f"it away or point AGENTFORGE_OUTPUTS or paths.outputs elsewhere")
    return None


def writable_problem(path: str) -> str | None:
    """Why the directory ``path`` cannot be written to, or None. A missing one is created to probe it and removed
    again with every parent this made (a run stopped by bad input before its work used to leave an empty
    ``artifacts/``; whoever writes there creates it). A probe file is created and removed: ``os.access`` says yes to
    root on a chmod-ed directory and can be wrong on network file systems, and a read-only mount refuses root too."""
    made, d = [], os.path.abspath(path)
    while not os.path.lexists(d) and os.path.dirname(d) != d:   # the levels makedirs creates, deepest first
        made.append(d)
        d = os.path.dirname(d)
    try:
        return _probe_problem(path)
    finally:
        for d in made:
            try:
                os.rmdir(d)
            except FileNotFoundError:   # makedirs failed before it
                continue
            except OSError:   # something else put a file there meanwhile: it and its parents stay
                break


def _probe_problem(path: str) -> str | None:
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"cannot be created as a directory ({exc.strerror or exc})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    try:
        fd, probe = tempfile.mkstemp(prefix=".agentforge-probe-", dir=path)
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def repeated_overrides(argv: list[str]) -> list[str]:
    """A ``warning:`` line per key given more than once on the command line (Hydra uses the last, silently:
    ``seed=1 seed=2`` trained with seed 2), naming every value given; credentials' values are not shown."""
    from agentforge.tracking.redaction import redact_args

    values: dict[str, list[str]] = {}
    for arg in redact_args([a for a in argv if "=" in a and not a.startswith("-")]):
        key, _, value = arg.lstrip("+~").partition("=")
        values.setdefault(key, []).append(value)
    return [f"warning: {key} is given {len(v)} times ({', '.join(v)}); the last, {v[-1]}, is used"
            for key, v in values.items() if len(v) > 1]


def _flag(argv: list[str], *names: str) -> str | None:
    """The value of a ``--flag VALUE`` / ``--flag=VALUE`` command-line option (the last one given), or None."""
    value = None
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


def saved_config_path(argv: list[str]) -> str | None:
    """The primary config file a command names with ``--config-path DIR --config-name NAME`` (a saved
    ``config_resolved.yaml`` rerun), as Hydra resolves it; None without both flags or for a non-file search path."""
    name, where = _flag(argv, "--config-name", "-cn"), _flag(argv, "--config-path", "-cp")
    if name is None or where is None or "://" in where and not where.startswith("file://"):
        return None
    return os.path.join(where.removeprefix("file://"), name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")


def config_file_problem(argv: list[str]) -> str | None:
    """Why the primary config file a command names with ``--config-path DIR --config-name NAME`` (a saved
    ``config_resolved.yaml`` rerun) cannot be read, or None: not UTF-8, not YAML, a tag OmegaConf refuses
    (``!!python/object``), not a mapping. Read as Hydra reads it, before Hydra does, so each is one line naming the
    file instead of a yaml / codec traceback. A file Hydra finds elsewhere (a package path) is left to Hydra."""
    path = saved_config_path(argv)
    if path is None or not os.path.isfile(path):
        return None   # Hydra names the missing config itself
    import yaml
    from omegaconf._utils import get_yaml_loader

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=get_yaml_loader())
    except UnicodeDecodeError:
        return f"{path}: not UTF-8 text; give a config file Agent Forge wrote (a run's config_resolved.yaml)"
    except yaml.constructor.ConstructorError as exc:
        return (f"{path}: holds a YAML tag the config cannot hold ({str(exc.problem)[:120]}); nothing ran — "
                f"give a config file Agent Forge wrote")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        return f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc}); fix or re-save the file"
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if data is not None and not isinstance(data, dict):
        return f"{path}: a YAML {type(data).__name__}, not a mapping of config keys; give a saved config file"
    return None


def run_hydra_main(main) -> None:
    """Call a ``hydra.main`` function; a Hydra error, or an outputs directory that cannot hold runs, becomes one
    ``error:`` line and exit 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"            # Hydra re-raises instead of printing its own report
    if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in sys.argv[1:]):
        for line in repeated_overrides(sys.argv[1:]):
            print(line, file=sys.stderr)
        problem = (config_file_problem(sys.argv[1:]) or chdir_problem(sys.argv[1:])
                   or outputs_problem(sys.argv[1:], dict(os.environ))
                   or next(filter(None, map(removed_key_problem, [a for a in sys.argv[1:] if a.startswith("~")])),
                           None))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
    try:
        main()
    except HydraException as exc:
        from agentforge.tracking.sweep import discard_unstarted_sweep

        discard_unstarted_sweep()
        print(f"error: {hydra_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:   # an Optuna sweep none of whose trials finished: the summary, then one line
        from agentforge.tracking.sweep import all_trials_failed

        line = all_trials_failed(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)


RUN_RECORDS = ("config_resolved.yaml", "metrics.jsonl")   # what a run dir that a job already used holds


def earlier_run_problem(run_dir: str) -> str | None:
    """Why a job cannot use ``run_dir``: it holds another run's records (a fixed ``hydra.run.dir``, a rerun from a
    saved ``config_resolved.yaml``, whose ``paths.run_dir`` is that run's). ``metrics.jsonl`` is appended to, so the
    two runs' steps were mixed in one file and ``overrides.yaml`` was replaced by the second's. None: it may be used.
    The pipeline's own step directories, which a resumed step continues on purpose, never come through here."""
    found = [name for name in RUN_RECORDS if os.path.isfile(os.path.join(run_dir, name))]
    if not found:
        return None
    replay = ""
    try:
        from omegaconf import OmegaConf

        saved = OmegaConf.to_container(OmegaConf.load(os.path.join(run_dir, "overrides.yaml")))
        args = [a for a in saved if not a.lstrip("+~").startswith(("hydra.run.dir", "paths.run_dir"))]
        replay = f"; to repeat that run, replay its overrides: python -m agentforge {shlex.join(args)}"  # pastes as is
    except Exception:   # no overrides.yaml, or not a list: no recipe to give
        pass
    return (f"the run directory {run_dir} already holds a run ({found[0]}): its records would be mixed with this "
            f"run's. Leave hydra.run.dir and paths.run_dir unset (each run gets a new directory) or give an empty "
            f"one{replay}")
