"""A bad-input fixture corpus in every supported format, and the rows each file must account for.

``write_bad_corpus(dir)`` writes the files; ``EXPECTED_ROWS_IN[name]`` is the number of rows the
file holds by its format's rules (counted by hand, independent of the readers), so a test can
check rows in = kept + rejected against a number the code did not produce.
"""

from __future__ import annotations

import json
from pathlib import Path

GOOD = [
    ("Open the file in the editor.", "Öffnen Sie die Datei im Editor."),
    ("Select the cells you want to format.", "Wählen Sie die Zellen aus, die Sie formatieren möchten."),
    ("Click the button to save your changes.", "Klicken Sie auf die Schaltfläche, um Ihre Änderungen zu speichern."),
]
LONG = "a " * 50_000  # a 100,000-character field

EXPECTED_ROWS_IN = {
    "bad.tsv": 12,
    "bad.csv": 11,
    "bad.jsonl": 13,
    "good.parquet": 5,
    "bad.tmx": 6,
    "bad.po": 7,
    "latin1.mo": 2,
    "hf": 4,
}
# files that cannot be read at all: the build stops with an error naming the file and position
UNREADABLE = {"truncated.parquet": "footer", "malformed.tmx": "line 4", "malformed.po": "line 8"}


def write_bad_corpus(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    (en1, de1), (en2, de2), (en3, de3) = GOOD
    tsv = [
        f"{en1}\t{de1}",
        f"{en2}\t{de2}",
        "",  # empty line
        "Only one column here",  # missing column
        f"{en3}\t{de3}\textra column",  # extra column
        None,  # invalid UTF-8 (written below)
        "Open the\x00 file now please\tÖffnen Sie\x00 die Datei jetzt",  # NUL bytes: cleaned, kept
        f"{LONG}\t{LONG}",  # 100,000 characters
        f"{en1}\t{de1}",  # duplicate
        '"Unterminated quote starts here\tDas Anführungszeichen endet nie',  # a quote is text in TSV
        "%s\t%s",  # format string only
        "Same text on both sides\tSame text on both sides",  # identical
    ]
    with open(d / "bad.tsv", "wb") as f:
        for line in tsv:
            f.write(b"Broken \xff\xfe bytes in this line\tKaputte Bytes\n" if line is None else line.encode() + b"\n")

    csv_lines = [
        "en,text,lang,score",  # header (not a row)
        f'"{en1}","{de1}",de,0.9',
        f'"{en2}, with a comma","{de2}, mit Komma",de,0.8',
        '"A field that spans',  # one record on two lines
        'two lines in the file.","Ein Feld über zwei Zeilen.",de,0.7',
        "",  # empty line
        "Missing columns,de",  # missing column
        f'"{en3}","{de3}",de,0.5,surplus',  # extra column
        None,  # invalid UTF-8
        '"bad"x,"Ein Streuzeichen",de,0.1',  # stray quote
        f'"{en1}","{de1}",de,0.9',  # duplicate
        '"This quote never closes,Nie geschlossen,de,0.1',  # unterminated: swallows to EOF
        "Last line of the file,Letzte Zeile der Datei,de,0.2",
    ]
    with open(d / "bad.csv", "wb") as f:
        for line in csv_lines:
            f.write(
                "Broken \udcff bytes here,Kaputt,de,0.3".encode("utf-8", "surrogateescape") + b"\n"
                if line is None
                else line.encode() + b"\n"
            )

    js = [
        json.dumps({"en": en1, "text": de1, "lang": "de"}),
        json.dumps({"en": en2, "text": de2, "lang": "de-DE"}),
        "",
        '{"en": "Broken json", "text": ',
        json.dumps({"en": 5, "text": "Fünf", "lang": "de"}),  # wrongly typed value
        json.dumps(["not", "an", "object"]),
        json.dumps({"en": "Only the English side"}),
        None,  # invalid UTF-8
        json.dumps({"en": "Open the\u0000 file now please", "text": "Öffnen Sie\u0000 die Datei jetzt", "lang": "de"}),
        json.dumps({"en": en3, "text": de3, "lang": "no such lang"}),
        json.dumps({"en": LONG, "text": LONG, "lang": "de"}),
        json.dumps({"en": en1, "text": de1, "lang": "de"}),  # duplicate
        json.dumps(
            {"en": "Ouvrir le fichier dans le programme.", "text": "Ouvrir le fichier dans le programme.", "lang": "fr"}
        ),  # identical
    ]
    with open(d / "bad.jsonl", "wb") as f:
        for line in js:
            f.write(b'{"en": "Broken \xff bytes", "text": "x", "lang": "de"}\n' if line is None else line.encode() + b"\n")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "en": [en1, en2, None, en1, en3],
                "text": [de1, de2, "Ohne Englisch", de1, "打开文件。"],
                "lang": ["de", "de", "de", "de", "zh-Hans"],
                "extra": [1, 2, 3, 4, 5],
            }
        ),
        d / "good.parquet",
    )
    pq.write_table(pa.table({"en": [en1] * 100, "text": [de1] * 100, "lang": ["de"] * 100}), d / "truncated.parquet")
    raw = (d / "truncated.parquet").read_bytes()
    (d / "truncated.parquet").write_bytes(raw[: len(raw) // 2])

    (d / "bad.tmx").write_text(
        f"""<?xml version="1.0" encoding="UTF-8"?>
<tmx version="1.4"><header srclang="en" datatype="plaintext" segtype="sentence" adminlang="en" creationtool="t" creationtoolversion="1" o-tmf="x"/>
<body>
<tu><tuv xml:lang="en-US"><seg>{en1}</seg></tuv><tuv xml:lang="de-DE"><seg>{de1}</seg></tuv><tuv xml:lang="fr"><seg>Ouvrez le fichier dans l'éditeur.</seg></tuv></tu>
<tu><tuv xml:lang="de"><seg>Nur Deutsch hier.</seg></tuv><tuv xml:lang="fr"><seg>Seulement le français.</seg></tuv></tu>
<tu><tuv lang="EN"><seg>Press <bpt i="1">&lt;b&gt;</bpt>Enter<ept i="1">&lt;/b&gt;</ept> to confirm the dialog.</seg></tuv><tuv lang="DE"><seg>Drücken Sie <ph>&lt;br/&gt;</ph>Eingabe, um den Dialog zu bestätigen.</seg></tuv></tu>
<tu><tuv xml:lang="en"><seg>{en2}</seg></tuv><tuv xml:lang="!!"><seg>{de2}</seg></tuv></tu>
</body></tmx>
""",
        encoding="utf-8",
    )
    (d / "malformed.tmx").write_text(
        f'<?xml version="1.0"?>\n<tmx version="1.4"><body>\n<tu><tuv xml:lang="en"><seg>{en1}</seg></tuv><tuv xml:lang="de"><seg>{de1}</seg></tuv></tu>\n<tu><tuv xml:lang="en"><seg>Broken</tuv></tu>\n</body></tmx>\n',
        encoding="utf-8",
    )

    po_header = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n"Language: de\\n"\n"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
    (d / "bad.po").write_text(
        po_header
        + f'msgid "{en1}"\nmsgstr "{de1}"\n\n'
        + '#, fuzzy\nmsgid "A fuzzy entry is not reviewed."\nmsgstr "Ein ungeprüfter Eintrag."\n\n'
        + '#~ msgid "An obsolete entry left behind."\n#~ msgstr "Ein veralteter Eintrag."\n\n'
        + 'msgid "An entry nobody translated yet."\nmsgstr ""\n\n'
        + 'msgid "%d file was deleted from the disk"\nmsgid_plural "%d files were deleted from the disk"\nmsgstr[0] "%d Datei wurde von der Platte gelöscht"\nmsgstr[1] "%d Dateien wurden von der Platte gelöscht"\n\n'
        + '#, c-format\nmsgid "%s: %s"\nmsgstr "%s: %s"\n',
        encoding="utf-8",
    )
    (d / "malformed.po").write_text(po_header + 'msgid "Fine"\nthis line is not PO syntax\n', encoding="utf-8")

    import polib

    po = polib.POFile(encoding="iso-8859-1")
    po.metadata = {"Content-Type": "text/plain; charset=ISO-8859-1", "Language": "de"}
    po.append(polib.POEntry(msgid="Delete the selected file now.", msgstr="Löschen Sie die ausgewählte Datei jetzt."))
    po.append(polib.POEntry(msgid="Größe", msgstr="Größe"))  # identical
    mo_dir = d / "locale" / "de" / "LC_MESSAGES"
    mo_dir.mkdir(parents=True, exist_ok=True)
    po.save_as_mofile(str(mo_dir / "latin1.mo"))

    import datasets

    datasets.Dataset.from_dict(
        {"translation": [{"en": en1, "de": de1}, {"en": en2, "de": de2}, {"en": en3, "de": None}, {"en": en1, "de": de1}]}
    ).save_to_disk(str(d / "hf"))
    return {p.name: p for p in d.rglob("*") if p.is_file()}
