"""The README and docs/ stay true to the code.

- every ``runs/demo/...pt`` checkpoint they name is one that ``fgclep demo`` writes with its defaults (computed
  from the demo's code);
- every ``fgclep ...``, ``python -m fgclep_plugin...``, ``accelerate launch ... -m fgclep_plugin.train`` and
  ``torchrun ... -m fgclep_plugin...`` command in their shell code blocks names a real subcommand and real flags
  (and, when it has no ``...`` placeholder, parses with the real parsers: the ``fgclep`` parser, and for training
  the plugin's flags plus open_clip_train's own parser);
- the README's real-data recipe chains: every checkpoint it reads is written by a training command before it,
  every shard set it reads is written by a command before it.

A failure names the file and line of the command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from open_clip_train import params as open_clip_params

from fgclep_plugin.cli import build_parser
from fgclep_plugin.demo import checkpoint_paths
from fgclep_plugin.train import split_argv

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}  # the fence's info string
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
SHELL_KEYWORDS = {"do", "then", "else", "time", "nohup"}
PLACEHOLDER = "..."


@dataclass
class Command:
    """One shell command of a code block: where it stands and its words."""

    page: Path
    line: int
    words: list[str]

    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}: {' '.join(self.words)[:160]}"


def _strip_comments(text: str) -> str:
    """``text`` without shell comments: a ``#`` that starts a word, outside quotes, to the end of its line."""
    out, quote = [], None
    for k, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or text[k - 1].isspace()):
            end = text.find("\n", k)
            return "".join(out) + ("" if end < 0 else _strip_comments(text[end:]))
        out.append(ch)
    return "".join(out)


def _split_words(text: str) -> list[str]:
    lex = shlex.shlex(_strip_comments(text), posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    lex.commenters = ""
    return list(lex)


def shell_commands(page: Path) -> list[Command]:
    """Commands of the shell code blocks of ``page``: continuation lines joined, comments dropped, split at
    ``&&``/``;``/``|``, redirections removed."""
    lines = page.read_text().splitlines()
    out: list[Command] = []
    in_block, shell, i = False, False, 0
    while i < len(lines):
        text = lines[i]
        fence = re.match(r"^\s*```(\S*)", text)
        if fence:
            in_block, shell = (not in_block), fence.group(1) in SHELL_BLOCKS
            i += 1
            continue
        if not (in_block and shell) or not text.strip():
            i += 1
            continue
        start = i + 1
        buf = text
        while True:  # backslash continuations and quotes spanning lines
            if buf.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                buf = buf.rstrip()[:-1] + " " + lines[i]
                continue
            try:
                words = _split_words(buf)
            except ValueError:  # a quote still open: the next line continues it
                if i + 1 >= len(lines):
                    raise
                i += 1
                buf += "\n" + lines[i]
                continue
            break
        i += 1
        segment: list[str] = []
        for w in [*words, ";"]:
            if w in OPERATORS:
                if segment:
                    out.append(Command(page, start, segment))
                segment = []
            else:
                segment.append(w)
    for c in out:  # redirections and leading shell keywords
        c.words = [w for k, w in enumerate(c.words) if not (w.startswith(">") or c.words[k - 1 : k] == [">"])]
        while c.words and Path(c.words[0]).name in SHELL_KEYWORDS:  # `do`, `time -v`, `nohup`: what they run
            c.words = c.words[1:]
            while c.words and is_flag(c.words[0]):
                c.words = c.words[1:]
    return [c for c in out if c.words]


def inline_commands(page: Path) -> list[Command]:
    """Inline code spans outside code blocks that are a command (``fgclep ...``, ``python -m fgclep_plugin...``,
    ``accelerate launch ... -m fgclep_plugin...``); often fragments, so only checked for names and flags."""
    # code blocks blanked out (their line breaks kept), so their fences do not pair with inline backticks
    text = re.sub(
        r"^\s*```.*?^\s*```",
        lambda m: "\n" * m.group().count("\n"),
        page.read_text(),
        flags=re.DOTALL | re.MULTILINE,
    )
    out = []
    for m in re.finditer(r"`([^`]+)`", text):
        try:
            words = _split_words(m.group(1).replace("\n", " "))
        except ValueError:
            continue
        c = Command(page, text.count("\n", 0, m.start()) + 1, words)
        if words and (fgclep_argv(c) is not None or train_args(c) is not None):
            out.append(c)
    return out


def is_flag(word: str) -> bool:
    return word.startswith("-") and word != "-" and not re.match(r"^-\d", word)


def is_placeholder(word: str) -> bool:
    """``...`` or an upper-case stand-in such as ``NAME``, ``COMMAND``, ``DIR``."""
    return PLACEHOLDER in word or re.fullmatch(r"[A-Z][A-Z_]+", word) is not None


def has_placeholder(words: list[str]) -> bool:
    return any(is_placeholder(w) for w in words)


# --- what a command runs ---------------------------------------------------------------------------------


def _module_call(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, args) of ``python -m M``, ``accelerate launch [opts] -m M``, ``torchrun [opts] -m M``."""
    head = Path(words[0]).name
    if re.fullmatch(r"python3?(\.\d+)?", head) or (head == "accelerate" and words[1:2] == ["launch"]):
        pass
    elif head != "torchrun":
        return None
    if "-m" not in words:
        return None
    k = words.index("-m")
    return words[k + 1], words[k + 2 :]


def fgclep_argv(c: Command) -> list[str] | None:
    """The ``fgclep`` argv a command runs (console script, ``-m fgclep_plugin.cli``, the modules that are one
    subcommand), or None."""
    if Path(c.words[0]).name == "fgclep":
        return c.words[1:]
    call = _module_call(c.words)
    if call is None:
        return None
    module, args = call
    return {
        "fgclep_plugin.cli": args,
        "fgclep_plugin.demo": ["demo", *args],
        "fgclep_plugin.augment.generate": ["features", "generate", *args],
    }.get(module)


def train_args(c: Command) -> list[str] | None:
    call = _module_call(c.words)
    return call[1] if call and call[0] == "fgclep_plugin.train" else None


# --- the parsers -------------------------------------------------------------------------------------------


class _Captured(Exception):
    pass


@cache
def open_clip_options() -> frozenset[str]:
    """Every option string of open_clip_train's own parser (captured as ``params.parse_args`` builds it)."""
    captured: dict[str, argparse.ArgumentParser] = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        captured["parser"] = self
        raise _Captured

    argparse.ArgumentParser.parse_args = capture
    try:
        open_clip_params.parse_args([])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return frozenset(captured["parser"]._option_string_actions)


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _parse_error(parse, argv: list[str]) -> str | None:
    """The usage error of ``parse(argv)`` (argparse's message), or None when it parses."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(argv)
    except SystemExit as e:
        if e.code:
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def check_train(args: list[str], fragment: bool = False) -> list[str]:
    """Problems of ``python -m fgclep_plugin.train ARGS``: flags neither the plugin's nor open_clip's; when there
    is no placeholder, open_clip's own parse of what the plugin leaves it."""
    _, rest = split_argv(args)
    problems = [f"unknown training flag {w.split('=')[0]}" for w in rest if is_flag(w)
                and w.split("=")[0] not in open_clip_options()]  # fmt: skip
    if not (problems or fragment or has_placeholder(args)) and (
        err := _parse_error(open_clip_params.parse_args, rest)
    ):
        problems.append(f"open_clip_train does not parse it: {err}")
    return problems


def check_fgclep(argv: list[str], fragment: bool = False) -> list[str]:
    """Problems of ``fgclep ARGV``: the subcommand (and nested action) exist, every flag is an option of it,
    flags after ``--`` (the demo's training flags) are training flags; without placeholders it parses. A
    ``fragment`` (an inline mention such as ``fgclep eval``) may stop before the action and is not parsed."""
    parser = build_parser()
    p, words, path = parser, list(argv), ["fgclep"]
    extra: list[str] = []
    if "--" in words:
        words, extra = words[: words.index("--")], words[words.index("--") + 1 :]
    problems = []
    # fgclep COMMAND [ACTION] ...: flags before a name are the parent's
    while (sub := _subparsers(p)) is not None:
        k = next((k for k, w in enumerate(words) if not is_flag(w)), None)
        before, words = (words, []) if k is None else (words[:k], words[k:])
        problems += [
            f"{' '.join(path)} has no option {w}" for w in before if w not in p._option_string_actions
        ]
        if k is None or is_placeholder(words[0]):
            if not (fragment or words or {"-h", "--help", "--version"} & set(before)):
                problems.append(f"{' '.join(path)} needs a subcommand ({', '.join(sub.choices)})")
            return problems
        if words[0] not in sub.choices:
            return [*problems, f"{' '.join(path)} has no subcommand {words[0]!r} ({', '.join(sub.choices)})"]
        p, path, words = sub.choices[words[0]], [*path, words[0]], words[1:]
    problems += [
        f"{' '.join(path)} has no option {w.split('=')[0]}"
        for w in words
        if is_flag(w) and w.split("=")[0] not in p._option_string_actions
    ]
    problems += check_train(extra) if extra else []
    if not (problems or fragment or has_placeholder(argv)) and (err := _parse_error(parser.parse_args, argv)):
        problems.append(f"{' '.join(path)} does not parse it: {err}")
    return problems


# --- the demo's checkpoints --------------------------------------------------------------------------------


def demo_checkpoints() -> set[str]:
    """The checkpoint paths ``fgclep demo`` writes with its defaults, from the demo's own code."""
    args = build_parser().parse_args(["demo"])
    return {str(p) for p in checkpoint_paths(args).values()}


def test_demo_checkpoints_named_in_the_docs_are_the_ones_the_demo_writes():
    written = demo_checkpoints()
    assert written, "the demo writes no checkpoint?"
    named, wrong = 0, []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for path in re.findall(r"runs/demo/[^\s`'\"()\[\]|,;]*\.pt", line):
                named += 1
                if path not in written:
                    wrong.append(f"{page.relative_to(ROOT)}:{n}: {path}")
    assert not wrong, f"checkpoints the demo does not write (it writes {sorted(written)}):\n" + "\n".join(
        wrong
    )
    readme = README.read_text()
    assert all(p in readme for p in written), f"the README names every checkpoint the demo writes: {written}"
    assert named >= len(written)


# --- commands ------------------------------------------------------------------------------------------------


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in shell_commands(page)]


def test_the_docs_show_commands():
    commands = all_commands()
    readme = [c for c in commands if c.page == README]
    assert sum(fgclep_argv(c) is not None for c in readme) >= 5
    assert sum(train_args(c) is not None for c in readme) >= 2
    assert any(c.words[:2] == ["fgclep", "demo"] for c in readme)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_parses(page):
    problems = []
    blocks, inline = shell_commands(page), inline_commands(page)
    for c in blocks + inline:
        fragment = c in inline
        if (argv := fgclep_argv(c)) is not None:
            found = check_fgclep(argv, fragment)
        elif (args := train_args(c)) is not None:
            found = check_train(args, fragment)
        elif (call := _module_call(c.words)) and call[0].startswith("fgclep_plugin"):
            found = [] if importlib.util.find_spec(call[0]) else [f"no module {call[0]}"]
        else:
            continue
        problems += [f"{c.where()}\n    -> {p}" for p in found]
    assert not problems, "commands that do not match the code:\n" + "\n".join(problems)


def test_the_checker_catches_wrong_commands(tmp_path):
    assert check_fgclep(["demo", "--epochs", "2"]) == []
    assert check_fgclep(["eval"], fragment=True) == [] and check_fgclep(["COMMAND", "--help"]) == []
    assert any("needs a subcommand" in p for p in check_fgclep(["eval"]))
    assert any("no subcommand 'demoo'" in p for p in check_fgclep(["demoo"]))
    assert any("no option --no-such-flag" in p for p in check_fgclep(["demo", "--no-such-flag", "1"]))
    assert any("no option --no-such-flag" in p for p in check_fgclep(["eval", "zeroshot", "--no-such-flag"]))
    assert any("does not parse" in p for p in check_fgclep(["demo", "--epochs", "two"]))
    assert any(
        "unknown training flag --no-such" in p for p in check_train(["--model", "X", "--no-such", "1"])
    )
    assert check_train(["--model", "X", "--fnm-lambda", "0.5", "--epochs", "2"]) == []
    assert any("--no-such" in p for p in check_fgclep(["demo", "--", "--no-such"]))
    page = tmp_path / "page.md"
    page.write_text("```bash\nfgclep a --b 1 \\\n  --c 2  # note\nx && fgclep d > f.txt\n```\n")
    cmds = shell_commands(page)
    assert [c.words for c in cmds] == [["fgclep", "a", "--b", "1", "--c", "2"], ["x"], ["fgclep", "d"]]
    assert [c.line for c in cmds] == [2, 4, 4]


# --- the README's recipe chains ------------------------------------------------------------------------------


def _shard_glob(spec: str) -> str:
    """``a/b-{000000..000123}.tar`` and ``a/b-%06d.tar`` -> ``a/b-*.tar``."""
    return re.sub(r"\{\d+\.\.\d+\}|%0?\d*d", "*", spec)


def _option(words: list[str], name: str) -> list[str]:
    return [words[k + 1] for k, w in enumerate(words[:-1]) if w == name]


def test_the_readme_recipe_chains():
    """Each checkpoint the README reads was written by a training command before it (open_clip writes
    LOGS/NAME/checkpoints/epoch_<epochs>.pt), each shard set it reads by an ``--out`` before it."""
    checkpoints, shards, problems = set(), set(), []
    for c in shell_commands(README):
        w = c.words
        reads_ckpt = _option(w, "--pretrained") + [x.split("=", 1)[-1] for x in _option(w, "--checkpoint")]
        for ck in reads_ckpt:
            if ck != "none" and not ck.startswith("runs/demo/") and ck not in checkpoints:
                problems.append(f"{c.where()}\n    -> reads {ck}, which no command before it writes")
        for opt in ("--data", "--train-data", "--ecg-zeroshot-data"):
            for spec in _option(w, opt):
                if _shard_glob(spec) not in shards:
                    problems.append(f"{c.where()}\n    -> reads {spec}, which no command before it writes")
        if (args := train_args(c)) is not None:
            logs, name, epochs = (_option(args, k) for k in ("--logs", "--name", "--epochs"))
            if logs and name and epochs:
                checkpoints.add(f"{logs[-1]}/{name[-1]}/checkpoints/epoch_{epochs[-1]}.pt")
        shards.update(_shard_glob(o) for o in _option(w, "--out"))
    assert checkpoints, "the README shows no training command with --logs, --name and --epochs"
    assert not problems, "\n".join(problems)


# --- links ---------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_point_to_files_and_headings():
    problems = []
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists():
                    problems.append(f"{page.relative_to(ROOT)}:{n}: {target}: no such file")
                elif anchor and file.suffix == ".md":
                    slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)}
                    if anchor not in slugs:
                        problems.append(f"{page.relative_to(ROOT)}:{n}: {target}: no heading #{anchor}")
    assert not problems, "broken links:\n" + "\n".join(problems)
