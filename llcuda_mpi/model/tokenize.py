"""`llcuda-mpi tokenize MODEL.gguf TEXT`: tokenize like llama.cpp's `llama-tokenize`.

Default output: one line per token, `   id -> 'piece'` (bytes that are not
valid UTF-8 on their own are shown as \\xNN). `--ids`: the id list only,
`[1, 15043, 3186]`. `--file F`: every line of F (split on "\\n", a trailing
"\\r" dropped, empty lines kept) is tokenized and printed as one JSON object
per line: {"text", "ids", "n_tokens"} plus "pieces" unless --ids.
Only the tokenizer metadata of MODEL is read, never its tensors.
"""

import json
import sys
from dataclasses import dataclass

from llcuda_mpi.model.tokenizer import Tokenizer, TokenizerError


@dataclass(frozen=True)
class TokenizeDefaults:
    add_bos: bool | None = None      # None: the model's tokenizer.ggml.add_bos_token
    parse_special: bool = False


DEFAULTS = TokenizeDefaults()


def add_arguments(parser):
    parser.add_argument("model", metavar="MODEL.gguf", help="GGUF model (or vocab-only) file")
    parser.add_argument("text", metavar="TEXT", nargs="?", help="text to tokenize (or use --file / --stdin)")
    parser.add_argument("--file", metavar="F", help="tokenize each line of F; print one JSON result per line")
    parser.add_argument("--stdin", action="store_true", help="read TEXT from standard input (whole input, one text)")
    parser.add_argument("--ids", action="store_true", help="print only the token ids, as a list")
    parser.add_argument("--no-bos", action="store_true",
                        help="never add BOS (default: as the model's tokenizer.ggml.add_bos_token says)")
    parser.add_argument("--parse-special", action="store_true", default=DEFAULTS.parse_special,
                        help="recognise control tokens written in the text, e.g. <|im_start|>")
    parser.add_argument("--show-count", action="store_true", help="also print the number of tokens")


def _piece(tok, tid):
    return tok.token_to_piece(tid).decode("utf-8", errors="backslashreplace")


def _read_lines(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise TokenizerError(f"--file {path}: {exc.strerror}") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"--file {path}: line {n} is not valid UTF-8 (byte {exc.start})") from None
    return out


def run(args) -> int:
    sources = (args.text is not None) + (args.file is not None) + bool(args.stdin)
    if sources != 1:
        print("llcuda-mpi tokenize: error: give exactly one of TEXT, --file F or --stdin", file=sys.stderr)
        return 2
    add_bos = False if args.no_bos else DEFAULTS.add_bos
    try:
        tok = Tokenizer.from_file(args.model)
        if args.file is not None:
            for text in _read_lines(args.file):
                ids = tok.encode(text, add_bos=add_bos, parse_special=args.parse_special)
                rec = {"text": text, "ids": ids, "n_tokens": len(ids)}
                if not args.ids:
                    rec["pieces"] = [_piece(tok, i) for i in ids]
                print(json.dumps(rec, ensure_ascii=False))
            return 0
        text = sys.stdin.read() if args.stdin else args.text
        ids = tok.encode(text, add_bos=add_bos, parse_special=args.parse_special)
    except UnicodeDecodeError as exc:
        print(f"llcuda-mpi tokenize: error: standard input is not valid UTF-8 (byte {exc.start})", file=sys.stderr)
        return 1
    except TokenizerError as exc:
        print(f"llcuda-mpi tokenize: error: {exc}", file=sys.stderr)
        return 1
    if args.ids:
        print("[" + ", ".join(map(str, ids)) + "]")
    else:
        for i in ids:
            print(f"{i:6d} -> '{_piece(tok, i)}'")
    if args.show_count:
        print(f"Total number of tokens: {len(ids)}")
    return 0
