"""Writes the README's measured tables from bench/results/*.json (the only source of those tables).

    python bench/readme_tables.py          # rewrites the block between the bench-table markers in README.md
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench tables: begin (bench/readme_tables.py) -->", "<!-- bench tables: end -->"


def table(document):
    peak = document["peak"]["value"]
    lines = [f"**{document['op']}** on {document['device']} ({document['date']}, unit {document['unit']}, "
             f"peak {peak:g}: {document['peak']['what']}); `{document['command']}`", "",
             "| case | MFA | % of peak | peer | peer value | ratio | rel. error | variant |",
             "|---|---:|---:|---|---:|---:|---:|---|"]
    for row in document["rows"]:
        lines.append(f"| {row['case']} | {row['ours']:.1f} | {100 * row['ours'] / peak:.0f}% | {row['peer']} | "
                     f"{row['peer_value']:.1f} | {row['ratio']:.2f} | {row.get('error', float('nan')):.1e} | "
                     f"`{row.get('variant', '')}` |")
    return "\n".join(lines)


def main():
    documents = [json.loads(path.read_text()) for path in sorted((ROOT / "bench" / "results").glob("*.json"))]
    block = "\n\n".join([BEGIN, *(table(document) for document in documents), END])
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    readme.write_text(pattern.sub(lambda _: block, text))


if __name__ == "__main__":
    main()
