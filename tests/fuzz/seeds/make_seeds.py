#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into tests/fuzz/corpus/<target>/ from the real
captures in tests/fixtures and typical rule texts. Run from the repository root; the committed
corpora are these seeds plus what fuzzing found, minimized with `cargo fuzz cmin`."""
import glob
import hashlib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write(target, data):
    out = os.path.join(ROOT, "tests", "fuzz", "corpus", target)
    os.makedirs(out, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def fixtures(pattern):
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", pattern))):
        with open(path, "rb") as f:
            yield f.read()


# First byte: bit 7 small limits, bits 0-6 chunk sizes (0 = one piece).
for data in fixtures("asterisk/*.rx.raw"):
    for seed in (0x00, 0x05, 0x40):
        write("agi_reader", bytes([seed]) + data)
    write("agi_reader", bytes([0x83]) + data[:600])

for data in list(fixtures("freeswitch/*/*.raw")) + list(fixtures("freeswitch/*/*.rx")):
    for seed in (0x00, 0x11):
        write("esl_reader", bytes([seed]) + data)
    if len(data) <= 1500:
        write("esl_reader", bytes([0x87]) + data)

callers = []
for line in next(fixtures("numbers/examples.tsv")).decode().splitlines():
    if line.startswith("#") or not line.strip("\t"):
        continue
    callers.append(line.split("\t")[0])
callers += [
    "84951234567", "+7 (495) 123-45-67", "unknown", "anonymous", "Restricted", "",
    "local:101", "invalid:alice", "invalid:+999123456789", "%2B74951234567",
    "<sip:+74951234567@203.0.113.5;user=phone>", "8 800 200-00-00 ext. 12", "0000000000",
    "+44 (0)20 7946 0958", "tel:+1-415-555-0100;ext=12", "\u00a0+7\u2013495\u2013123",
]
for c in callers:
    write("normalizer", c.encode())

rules = [
    "8 (495) 123-45-67", "+7 495 123 45 67", "Anonymous", "101", "invalid", "8 (495) 123-XX-XX",
    "+7495123XXXX", "_7495123XXXX", "_84951234xxx", "495 123 XX XX", "8 (495) 123-\u0425\u0425-\u0425\u0425",
    "_7495NXXXXXX", "_7495Z[1-5][135-9]XXXX", "_7495[0123456789]XXXXXX", "_7495[12]XXXXXX",
    "_7495123.", "_7495123!", "_8495123.", "+44 (0)20 7946 XXXX", "+7495123*", "8 495 123*",
    "7495123*", "495123*", "810 44 20*", "00 44 20*", "8 800*",
    "+74951230000-+74951239999", "84951230000-84951239999",
    "8 495 123-00-00 - 8 495 123-99-99", "+74951230000..+74951239999",
    "+74951234567-+74951234567", "_7495*123", "+7495[12XXXX", "XXXXXXXXXXX",
    "84951239999-84951230000", "sip:+74951234567@carrier", "SPAM",
    "hangup", "hangup 17", "hangup(busy)", "hangup: rejected", "busy", "congestion", "tag",
    "playback ss-noservice", "playback custom/blocked", "redirect voicemail,s,1",
    "redirect ivr", "redirect operator,100", "playback ../etc/passwd",
    "mon-fri 09:00-18:00", "mon-fri 09:00-13:00,14:00-18:00; sat 10:00-14:00",
    "daily 22:00-06:00", "sat-sun", "sun", "mon,wed,fri 08:00-12:00", "fri-mon 23:00-24:00",
    "Saturday 00:00-24:00", "sun 01:00-02:30", "daily",
]
for r in rules:
    write("rule_parser", r.encode())

for fields in [
    ["84951234567", "Office", "spam calls", "acme", "hangup 17"],
    ["+7 (495) 123-45-67", "", "x\"\nEXEC Dial PJSIP/evil\n\\", "", "busy"],
    ["anonymous", "A \"B\"", "x\nexecute-app-name: system\n\nexit\n\n${rm}", "acme\n\napi system id\n\n", "playback custom/blocked"],
    ["84957654321\n\napi system id\n\n", "n\r\nHANGUP", "%0Aunload mod_event_socket", "Acme-1", "redirect voicemail,s,1"],
    ["unknown", "\u044f\U0001F600", "\\" * 40, "t", "tag"],
    ["sip:+74951234567@203.0.113.5", "\"Spam\" <x>", "\"" * 30, "ACME", "congestion"],
    ["+44 20 7946 0958", "\t\x00", "r" * 2100, "a" * 70, "hangup\u00a017"],
    ["101", "\u0085\u2028", "reason with ${system(id)} and $${x}", "x.y-z", "redirect ivr,100"],
    ["invalid:alice", "\u00e9", "%41%2B%0D%0A", "", "playback ../x"],
    ["", "", "", "", ""],
]:
    write("encoders", b"\xff".join(f.encode() for f in fields))
