"""Assembles tests/assets/tokenizer-corpus.txt from text already on a Debian machine.

Run once by hand (the corpus is committed); see tests/assets/README.md. Deterministic: fixed seed and
sorted file lists, so a rerun on the same machine gives the same file.
"""
import gettext, glob, gzip, os, random, subprocess, sys

random.seed(1234)
lines = []

def take(text_lines, n, max_len=400):
    good = [l.rstrip("\n") for l in text_lines if l.strip() and len(l) <= max_len]
    random.shuffle(good)
    lines.extend(good[:n])

# 1. Debian documentation (changelogs, READMEs, copyright files).
docs = []
for path in sorted(glob.glob("/usr/share/doc/*/*"))[:4000]:
    try:
        if path.endswith(".gz"):
            docs += gzip.open(path, "rt", encoding="utf-8", errors="ignore").read().splitlines()[:60]
        elif os.path.isfile(path) and os.path.getsize(path) < 200_000:
            docs += open(path, encoding="utf-8", errors="ignore").read().splitlines()[:60]
    except OSError:
        pass
take(docs, 500)

# 2. Man pages rendered as text.
man = []
for page in ["bash", "git", "ls", "grep", "tar", "ssh", "cmake", "python3", "gcc", "find", "sed", "awk"]:
    out = subprocess.run(["man", "-P", "cat", page], capture_output=True, text=True, errors="ignore",
                         env={**os.environ, "MANWIDTH": "100"}).stdout
    man += out.splitlines()
take(man, 350)

# 3. Source code (C++ headers, Python stdlib) with indentation kept.
src = []
for path in sorted(glob.glob("/usr/include/c++/12/bits/*.h"))[:40] + sorted(glob.glob("/usr/lib/python3.11/*.py"))[:60]:
    src += open(path, encoding="utf-8", errors="ignore").read().splitlines()
take(src, 400, max_len=200)

# 4. Translations in many languages and scripts, from the machine's gettext catalogs.
by_lang = {}
for mo in sorted(glob.glob("/usr/share/locale/*/LC_MESSAGES/*.mo")):
    lang = mo.split("/")[4]
    try:
        cat = gettext.GNUTranslations(open(mo, "rb"))
    except Exception:
        continue
    by_lang.setdefault(lang, []).extend(v for k, v in cat._catalog.items() if isinstance(v, str) and k)
for lang in ["de", "fr", "es", "ru", "uk", "ja", "zh_CN", "zh_TW", "ko", "el", "tr", "vi", "pl", "ar", "he",
             "hi", "th", "ka", "bg", "sr", "fa", "ta", "bn", "am", "hy", "pt_BR", "cs", "fi", "hu", "ro"]:
    take(by_lang.get(lang, []), 25, max_len=300)

# 5. Hand-written edge cases: emoji, whitespace runs, control characters, special-token text.
edge = [
    "emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ✨🚀",
    "tabs\tand\t\tmore\t\t\ttabs", "trailing spaces   ", "   leading spaces", "a    b     c      d",
    "\u00a0non-breaking\u00a0spaces\u2003em\u2009thin\u3000ideographic", "zero\u200bwidth\u200djoiner\ufeffbom",
    "control \x01\x02\x03\x07\x08\x0b\x0c\x1b[31mred\x1b[0m \x7f end", "carriage\rreturn\rinside",
    "<|endoftext|> <|im_start|>user\nhi<|im_end|>".replace("\n", " "), "<s> [INST] hello [/INST] </s>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|> x", "<unk><pad>", "<0x41>",
    "café naïve résumé façade coöperate", "cafe\u0301 nai\u0308ve (decomposed)", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "ﬁ ﬂ ligatures ſt", "Ⅻ ① ² ½ numbers", "I'm you're they've we'll she'd IT'S DON'T", "ſ's KELVIN K",
    "1234567890 3.14159 1e-10 0xDEADBEEF 1,000,000", "user@example.com https://example.org/a?b=c&d=e#f",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉", "가나다라 한국어 각", "Ελληνικά κείμενα", "עברית מימין לשמאל", "العربية من اليمين",
    "日本語のテキストとカタカナ", "中文文本测试，标点符号。", "ภาษาไทย", "हिन्दी पाठ", "a" * 300, "ab " * 120,
    "!!!???...,,,;;;:::", "```python\ndef f(x):\n    return x\n```".replace("\n", " "), "    \t  ",
    "${HOME}/path/to/file.txt && echo $?", "\\n \\t \\\\ escapes", "ÄÖÜäöüß ÆØÅæøå Ł ł Ő ő",
]
lines.extend(edge)
random.shuffle(lines)

out = bytearray()
for l in lines:
    l = l.replace("\r\n", " ").replace("\n", " ")
    out += l.encode("utf-8") + b"\n"
# 6. Invalid UTF-8: lone continuation bytes, truncated sequences, overlongs, surrogates, bytes > F4.
for raw in [b"bad \xff byte", b"lone \x80\x81 continuation", b"truncated \xe2\x82 euro", b"overlong \xc0\xaf slash",
            b"surrogate \xed\xa0\x80 half", b"too big \xf5\x80\x80\x80", b"end cut \xf0\x9f\x98", b"\xfe\xfe\xff",
            b"mix \xc3\xa9\xc3 \xe6\x97\xa5\xe6\x9c", b"latin-1 caf\xe9 na\xefve"]:
    out += raw + b"\n"
open(sys.argv[1], "wb").write(out)
print(len(out.splitlines()), "lines,", len(out), "bytes")
