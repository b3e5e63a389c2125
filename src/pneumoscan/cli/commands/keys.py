"""`pneumoscan keys new`: make an API key for `pneumoscan serve --api-keys FILE`.

The key goes to stdout once and is never stored: the file gets its id and SHA-256 (pneumoscan.serving.keys),
so whoever reads the file cannot use it. A running service picks the new key up within a second.
"""

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

HELP = "make API keys for `serve` (printed once, stored hashed)"


def add(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("keys", help=HELP, description=HELP + ".")
    actions = parser.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="print a new key once and append its id and SHA-256 to --file",
                             description="Print a new API key (psk_ + 256 random bits) on stdout, once, and append "
                                         "'<id> <sha-256>' to --file (made with mode 0600 if new; written atomically)."
                                         " Without --file nothing is written: the entry to put in "
                                         "PNEUMOSCAN_API_KEYS is printed on stderr.")
    new.add_argument("--file", type=Path, default=None, metavar="FILE", help="key file of `serve --api-keys`")
    new.add_argument("--id", default=None, metavar="NAME",
                     help="the key's name in the access log and the rate limiter (default: key-N, the first free N)")


def run(args: argparse.Namespace, console: Console, out: Console, command: str) -> None:
    from pneumoscan.errors import PneumoscanError
    from pneumoscan.serving.keys import ENV_VAR, KEY_ID, StoredKey, append_key, digest, new_key, next_key_id

    path: Path | None = args.file
    key_id = args.id or (next_key_id(path) if path is not None else "key-1")
    if not KEY_ID.fullmatch(key_id):
        raise PneumoscanError(f"--id {key_id!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                              "letter or digit")
    key = new_key()
    entry = StoredKey(key_id, digest(key))
    if path is not None:
        append_key(path, entry)
    out.print(key, markup=False, highlight=False, soft_wrap=True)
    where = (f"added to {escape(str(path))} as its SHA-256" if path is not None
             else f"stored nowhere; give the service this entry in {ENV_VAR} or a key file: {entry.line()}")
    console.print(f"key '{key_id}' above, shown only this once: {where}", highlight=False, soft_wrap=True)
