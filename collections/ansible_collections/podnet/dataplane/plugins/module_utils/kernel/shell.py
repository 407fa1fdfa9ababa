# Copyright: podnet contributors
# Apache License 2.0
"""Argument vectors as shell text: the one place podnet turns words into a command line or shows a value.

Commands are built as argv lists and joined here, so whatever a name holds (space, quote, `;`, `$`,
backtick, newline, non-ASCII) it stays one word when `sh` reads the line.  Words that need no quoting
stay bare, so ordinary output reads as a person types it.
"""
from __future__ import annotations

import shlex

# Words that mean something else as a command's first word: quoted there so a line still runs argv[0].
_RESERVED = frozenset({"!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in",
                       "then", "until", "while"})


def shell_word(word: str, first: bool = False) -> str:
    """One argv word as sh reads it back unchanged."""
    if "\0" in word:
        # execve cannot pass a NUL and sh cannot read one back: refuse rather than print something else.
        raise ValueError(f"a command word cannot contain a NUL character: {word!r}")
    if word == "!" and not first:
        # Only a pipeline's first word negates; elsewhere "!" is plain text (and shlex.split agrees).
        return word
    if first and (word in _RESERVED or "=" in word):
        # A bare NAME=value first word would be an assignment, a reserved word a keyword.
        return "'" + word.replace("'", "'\"'\"'") + "'"
    return shlex.quote(word)


def shell_line(argv: list[str]) -> str:
    """The command line that makes sh run exactly `argv` (shlex.split of it gives `argv` back)."""
    if not argv:
        raise ValueError("an empty command has no shell line")
    return " ".join(shell_word(str(word), first=index == 0) for index, word in enumerate(argv))


def netns_argv(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside network namespace `netns` (None: the node itself)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\f": "\\f",
            "\a": "\\a", "\b": "\\b", "\x1b": "\\e"}


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    # bash's \xHH is a byte, not a character: only ASCII goes that way, the rest as \u/\U code points.
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display_word(value: object) -> str:
    """A value for people to read (--diff, script comments): bare when plain, shell-quoted when it has
    spaces or shell characters, and bash's $'...' with escapes when it holds anything unprintable, so it
    never spans lines nor passes for another field.  Copied into bash it gives the value back."""
    text = str(value)
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(_escape_char(char) for char in text) + "'"


def comment_line(text: str) -> str:
    """A `# ...` script line: unprintable characters escaped, so nothing in `text` starts a new line."""
    return "# " + "".join(char if char.isprintable() else _escape_char(char) for char in text)
