"""`sftforge`: curate, train, run (both), report, serve. Runs locally with no server started by hand.

User errors (a bad config, a missing file, a run directory that is not one) print one message and
exit 2; a failed flow run prints what failed and exits 1; a rejected approval gate exits 3.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_FAILED = 1
EXIT_GATE_REJECTED = 3
EXIT_NOTHING_KEPT = 4


class UserError(Exception):
    """Something the user can fix; printed as one line, no traceback."""


def _prefect_env() -> None:
    """Settings Prefect reads at import: offline, and enough time for a cold ephemeral server."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # the stages log (progress, warnings) through the standard "pipeline" logger: show it with the run's
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # a stage called outside a flow


def _start_client() -> None:
    """Create the one API client (starting the ephemeral server when no PREFECT_API_URL is set) before
    any task thread does: two threads racing to create it start two servers, one of which outlives us."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.hello()


class _NoTraceback(logging.Formatter):
    """Formats like the wrapped formatter, without the exception's traceback (the message keeps its repr)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _console_without_tracebacks() -> None:
    """The terminal shows Prefect's run log without tracebacks (the Prefect UI still has them);
    `--debug` keeps them."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, PrefectConsoleHandler) and not isinstance(h.formatter, _NoTraceback):
                h.setFormatter(_NoTraceback(h.formatter or logging.Formatter()))


def _config(path: str, overrides: list[str], preflight: bool = True) -> Any:
    """The validated config; with `preflight`, also every problem of its inputs and output folder
    (flows.preflight), all at once, before any server starts."""
    from schemas.config import load_config

    cfg = load_config(path, overrides)
    if preflight:
        from flows.preflight import preflight as check

        problems = check(cfg)
        if problems:
            lines = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
            raise UserError(f"{path}: {len(problems)} problem(s) found before starting:\n{lines}")
    if cfg.gate.enabled and cfg.gate.require_approval and not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            f"{path}: gate.require_approval needs a Prefect server a person can reach: start one "
            "(prefect server start), export PREFECT_API_URL=http://127.0.0.1:4200/api, and run again; "
            "or set gate.require_approval = false to gate on thresholds only"
        )
    return cfg


def _claim_output(cfg: Any, stack: contextlib.ExitStack, command: str) -> Path:
    """Before any server or stage: the output folder must be ours (or new), and free; then hold its lock."""
    from pipeline.core.rundir import RunDirError, claim_run_dir, run_lock

    out = Path(cfg.output_dir)
    try:
        claim_run_dir(out)
        stack.enter_context(run_lock(out, command=command, warn=lambda m: print(f"sftforge: warning: {m}",
                                                                               file=sys.stderr)))
    except RunDirError as e:
        raise UserError(str(e)) from None
    return out


def _with_server(stack: contextlib.ExitStack) -> None:
    """A Prefect API for the flow: the one PREFECT_API_URL names, else the background server of
    `sftforge server start`, else a local server of ours that dies with this process (flows.procs).
    Its URL is set before prefect is imported (its settings are read at import), and the flow's
    modules are imported while it boots."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from flows.procs import local_prefect_server, running_server

    def point_at(url: str) -> None:
        os.environ["PREFECT_API_URL"] = url
        stack.callback(os.environ.pop, "PREFECT_API_URL", None)
        if "prefect" in sys.modules:  # imported earlier in this process (tests): override its settings too
            from prefect.settings import PREFECT_API_URL, temporary_settings

            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        import flows.curate  # noqa: F401 - the heavy imports (prefect, polars), while the server boots

    url = running_server()  # `sftforge server start` left one for this PREFECT_HOME: seconds, not tens
    if url is not None:
        point_at(url)
    else:
        stack.enter_context(local_prefect_server(while_starting=point_at))


def _run_flow(flow_name: str, args: argparse.Namespace) -> int:
    cfg = _config(args.config, args.set)  # validate before any flow run exists: errors stay one clean line
    with contextlib.ExitStack() as stack:
        _claim_output(cfg, stack, f"sftforge {flow_name} {args.config}")
        _with_server(stack)
        _start_client()
        if not args.debug:
            _console_without_tracebacks()
        from flows.curate import curate, curate_and_train

        fn = curate_and_train if flow_name == "run" else curate
        result = fn(config=args.config, overrides=args.set)
    print()
    _print_summary(Path(result["run_dir"]))
    print(f"run directory: {result['run_dir']}")
    print(f"report: {result['report']}")
    if result.get("nothing_kept"):
        from flows.curate import nothing_kept_reasons

        print(f"NOTHING KEPT: {nothing_kept_reasons(result.get('summary') or _report_json(Path(result['run_dir'])))}")
        return EXIT_NOTHING_KEPT
    if flow_name == "run":
        gate = result.get("gate") or {}
        if result.get("trained"):
            print(f"model: {result['model']}")
        elif gate and not gate.get("approved"):
            print(f"NOT TRAINED: the approval gate rejected the data ({gate['decided_by']}): {gate['reason']}")
            return EXIT_GATE_REJECTED
        else:
            print("not trained: train.enabled = false")
    return 0


def _report_json(run_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _print_summary(run_dir: Path) -> None:
    import json

    from pipeline.report.summary import summary_text

    try:
        print(summary_text(json.loads((run_dir / "report" / "report.json").read_text(encoding="utf-8"))))
        print()
    except (OSError, ValueError, KeyError):
        pass  # the paths below still say where everything is


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report.summary import build_report, summary_text

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if args.config:
        from schemas.config import load_config

        summary = build_report(run_dir, load_config(args.config, args.set))
    else:
        import json

        path = run_dir / "report" / "report.json"
        if not path.is_file():
            raise UserError(
                f"{run_dir}: no report/report.json; is this a run directory? Curate first "
                "(sftforge curate CONFIG) or rebuild with: sftforge report RUN_DIR --config CONFIG"
            )
        summary = json.loads(path.read_text(encoding="utf-8"))
    print(summary_text(summary))
    print(f"\nHTML report: {run_dir / 'report' / 'report.html'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import subprocess

    from flows.launch import torchrun_command

    target = Path(args.target)
    config = args.config
    if target.is_file():
        config = str(target)
    elif not target.is_dir():
        raise UserError(f"{target}: neither a config file nor a run directory")
    cfg = _config(config, args.set, preflight=False) if config else None
    run_dir = Path(cfg.output_dir) if cfg is not None and target.is_file() else target
    from flows.procs import parent_death_signal
    from pipeline.core.rundir import RunDirError, require_run_dir, run_lock

    with contextlib.ExitStack() as stack:
        try:
            require_run_dir(run_dir)
            stack.enter_context(run_lock(run_dir, command="sftforge train " + " ".join(sys.argv[2:]),
                                         warn=lambda m: print(f"sftforge: warning: {m}", file=sys.stderr)))
        except RunDirError as e:
            raise UserError(str(e)) from None
        if not (run_dir / "manifest.json").is_file():
            raise UserError(f"{run_dir}: no manifest.json, so no complete curated run: run sftforge curate CONFIG first")
        nproc = int(getattr(cfg.train, "nproc", 1) or 1) if cfg is not None else 1
        if nproc > 1 and config:
            cmd = torchrun_command(run_dir, config, args.set, nproc)
        else:
            cmd = [sys.executable, "-m", "trainer", str(run_dir)] + (["--config", config] if config else [])
            cmd += [x for o in args.set for x in ("--set", o)]
        if args.resume:
            cmd.append("--resume")
        # the trainer (or torchrun and its workers) ends when we do, even on kill -9
        return subprocess.call(cmd, preexec_fn=parent_death_signal())


def _cmd_serve(args: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "serve needs a Prefect server: start one with `prefect server start` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (see README, Deployments)"
        )
    _config(args.config, args.set)
    from flows.serve import serve_deployments

    serve_deployments(config=args.config, overrides=args.set, cron=args.cron)
    return 0


def _marked(text: str, spans: list[tuple[int, int]], tty: bool) -> str:
    """`text` with the supervised spans marked: green on a terminal, else between [[ and ]]."""
    out, last = [], 0
    for a, b in sorted(spans):
        out.append(text[last:a])
        out.append(f"\x1b[32m{text[a:b]}\x1b[0m" if tty else f"[[{text[a:b]}]]")
        last = b
    out.append(text[last:])
    return "".join(out)


def _cmd_inspect(args: argparse.Namespace) -> int:
    """How each source will be read: formats per file, the first records as canonical conversations,
    fields not read, errors; with --render the rendered text with the supervised part marked."""
    from pipeline.ingest.files import SourceError
    from pipeline.ingest.inspect import inspect_source

    cfg = _config(args.config, args.set, preflight=False)
    sources = [s for s in cfg.sources if args.source in (None, s.name)]
    if not sources:
        raise UserError(f"no source {args.source!r} in {args.config}; the sources are: "
                        + ", ".join(s.name for s in cfg.sources))
    tty = sys.stdout.isatty()
    render = _renderer(cfg) if args.render else None
    for s in sources:
        print(f"== source {s.name} ({s.tier}) {s.path}")
        try:
            ins = inspect_source(s, args.n)
        except SourceError as e:
            print(f"   cannot be read: {e}")
            continue
        for f, fmt in ins.files.items():
            print(f"   file {f}: format {fmt or '(no records)'}")
        for nr in ins.files_not_read:
            print(f"   not read: {nr['path']} ({nr['reason']})")
        for w in ins.warnings:
            print(f"   warning: {w}")
        if ins.not_read_counts:
            print("   fields not read: " + ", ".join(f"{k} (in {v} of these records)" for k, v in ins.not_read_counts.items()))
        for r in ins.records:
            print(f"-- {r.origin}: {r.outcome}" + (f" as {r.reason}: {r.detail}" if r.reason else ""))
            if r.not_read:
                print(f"   fields not read: {', '.join(r.not_read)}")
            for m in r.messages or []:
                text = m["content"] if len(m["content"]) <= 400 else m["content"][:400] + " …"
                if m.get("reasoning"):
                    text = f"(reasoning: {len(m['reasoning']):,} characters) {text}"
                for c in m.get("tool_calls") or []:
                    text += f" [calls {c['name']}({c['arguments'][:200]})]"
                print(f"   {m['role']:>9}: {text}")
            if render is not None and r.outcome == "kept" and len(r.messages or []) >= 2:
                print(render(r.messages, tty, r.tools))
    return 0


def _renderer(cfg: Any) -> Any:
    """A function showing a conversation as the run will train on it: the rendered text with the
    supervised part marked, and its token count when the tokenizer is known already."""
    from pipeline.render.encode import mask_options, template_of
    from pipeline.render.masks import target_turns
    from pipeline.render.templates import TemplateError

    template = template_of(cfg)
    tok = None
    for cand in (cfg.tokenizer.path, Path(cfg.output_dir) / "tokenizer"):
        if cand is not None and (Path(cand) / "tokenizer.json" if Path(cand).is_dir() else Path(cand)).exists():
            from pipeline.render.tokenizer import load_tokenizer

            tok = load_tokenizer(cand)
            break
    opts = mask_options(cfg)

    def show(messages: list[dict[str, Any]], tty: bool, tools: str | None = None) -> str:
        try:
            rendered = template.render(messages, tools)
        except TemplateError as e:
            return f"   (the template refuses it: tokenize.template_error: {e})"
        spans = [(t.start, t.end) for t in target_turns(rendered.turns, opts)]
        tokens = (f"{len(tok.encode(rendered.text, add_special_tokens=False).ids)} tokens"
                  if tok is not None else "tokens: the tokenizer is trained at curate time")
        body = _marked(rendered.text, spans, tty)
        return f"   rendered with {template.name} ({tokens}; supervised part marked):\n" + "\n".join(
            f"   | {line}" for line in body.splitlines())

    return show


def _cmd_init(args: argparse.Namespace) -> int:
    """A starter config for the given files or folders: one source each, format detected, tier to fill in."""
    import re

    from pipeline.ingest.files import Limits, SourceError, list_source
    from pipeline.ingest.stage import file_formats
    from schemas.config_sources import SourceConfig

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; choose another --output or add --force")
    lines = [f'name = "{args.name}"', f'output_dir = "data/processed/{args.name}"', ""]
    problems = []
    for i, path in enumerate(args.files):
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", Path(path).name.split(".")[0]) or f"source{i}"
        src = SourceConfig(name=name, path=Path(path), tier="crowdsourced")
        try:
            files, not_read = list_source(Path(path))
            formats = {f for f in file_formats(src, files, Limits(), []).values() if f}
        except SourceError as e:
            problems.append(str(e))
            continue
        fmt = formats.pop() if len(formats) == 1 else None
        lines += ["[[sources]]", f'name = "{name}"', f'path = "{path}"']
        lines.append(f'format = "{fmt}"' if fmt else "# format: detected per file (they differ)")
        lines += ['tier = "crowdsourced"  # TODO: expert | crowdsourced | synthetic (dedup keeps the higher tier)']
        if not_read:
            lines.append(f"# {len(not_read)} file(s) here are not read: " + ", ".join(Path(n['path']).name for n in not_read[:5]))
        lines.append("")
    if problems:
        raise UserError("cannot read: " + "; ".join(problems))
    lines += ["[template]", 'name = "chatml"  # or llama2 | llama3 | alpaca | a tokenizer dir | a .jinja file', "",
              "[pack]", "max_seq_len = 2048", "",
              "# every other key: sftforge config explain", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}: {len(args.files)} source(s); set each tier, then: sftforge inspect {out}")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    from flows.procs import running_server, start_background_server, stop_background_server

    if args.action == "start":
        url, pid, new = start_background_server()
        print(f"{'started' if new else 'already running'}: a local Prefect server at {url} (pid {pid}); "
              "sftforge commands with this PREFECT_HOME use it. Stop it with: sftforge server stop")
    elif args.action == "stop":
        pid = stop_background_server()
        print(f"stopped the local Prefect server (pid {pid})" if pid else "no local Prefect server was running")
    else:
        url = running_server()
        print(f"running at {url}" if url else "not running (sftforge server start)")
        return 0 if url else 1
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from schemas.explain import as_markdown, as_text, explain, write_readme

    if args.readme:
        print(f"{args.readme}: " + ("configuration reference updated" if write_readme(args.readme) else "up to date"))
        return 0
    try:
        items = explain(args.section)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    print(as_markdown(items) if args.markdown else as_text(items))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sftforge", description=__doc__.splitlines()[0],
        epilog="The run config is TOML: `sftforge config explain [SECTION]` describes every key (type, default, "
        "bounds, meaning). Exit codes: 0 done, 1 a stage failed, 2 a user error (config, input, output folder), "
        "3 the approval gate rejected the data, 4 the curation kept nothing (the report says why).",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def with_set(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=10 (repeatable)")

    for name, help_ in (("curate", "curate the data only"), ("run", "curate and train (the curate-and-train flow)")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="the run config (TOML)")
        with_set(sp)
    sp = sub.add_parser("train", help="train on an existing curated run")
    sp.add_argument("target", help="a config file, or a run directory")
    sp.add_argument("--config", default=None, help="config to use with a run directory")
    sp.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    with_set(sp)
    sp = sub.add_parser("report", help="print the data-quality summary of a run directory")
    sp.add_argument("run_dir")
    sp.add_argument("--config", default=None, help="rebuild the report from the run directory with this config")
    with_set(sp)
    sp = sub.add_parser("inspect", help="how the sources will be read: formats, first records, fields not read")
    sp.add_argument("config")
    sp.add_argument("--source", default=None, help="only this source")
    sp.add_argument("-n", type=int, default=3, help="records shown per file (default 3)")
    sp.add_argument("--render", action="store_true", help="also the rendered text, supervised part marked")
    with_set(sp)
    sp = sub.add_parser("init", help="write a starter config for some data files (formats detected)")
    sp.add_argument("files", nargs="+", help="data files or folders, one source each")
    sp.add_argument("--output", "-o", default="sftforge.toml", help="the config to write (default sftforge.toml)")
    sp.add_argument("--name", default="run", help="the run name")
    sp.add_argument("--force", action="store_true", help="overwrite --output")
    sp = sub.add_parser("server", help="a local Prefect server kept between commands (start-up in seconds)")
    sp.add_argument("action", choices=("start", "stop", "status"))
    sp = sub.add_parser("config", help="describe the configuration: every key, its type, default and bounds")
    csub = sp.add_subparsers(dest="config_command", required=True)
    ex = csub.add_parser("explain", help="every key of the run config (or of one section)")
    ex.add_argument("section", nargs="?", default=None, help="e.g. pack, quality, sources")
    ex.add_argument("--markdown", action="store_true", help="as a Markdown table")
    ex.add_argument("--readme", default=None, metavar="README.md", help="rewrite the README's generated reference")
    sp = sub.add_parser("serve", help="serve the deployments (needs a Prefect server)")
    sp.add_argument("--config", default="configs/demo.toml")
    sp.add_argument("--cron", default="0 3 * * *", help="schedule of the nightly deployment")
    with_set(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _prefect_env()
    from schemas.config import ConfigError

    try:
        if args.command in ("curate", "run"):
            return _run_flow(args.command, args)
        return {"report": _cmd_report, "train": _cmd_train, "serve": _cmd_serve, "config": _cmd_config,
                "server": _cmd_server, "inspect": _cmd_inspect,
                "init": _cmd_init}[args.command](args)
    except (UserError, ConfigError) as e:
        print(f"sftforge: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sftforge config explain | head`
        return 0
    except Exception as e:  # a failed flow run: say what failed, keep the traceback for --debug
        if args.debug:
            raise
        print(f"sftforge: {args.command} failed: {type(e).__name__}: {e}\n(run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
