"""Writes the README's measured tables from bench/results/*.json (the only source of those tables).

    python bench/readme_tables.py          # rewrites the block between the bench-table markers in README.md

Each op gets a compact table (the JSON files hold every row); every figure keeps its ratio to the peer
measured in the same process, and TFLOPS figures their share of the dense peak.
"""
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench tables: begin (bench/readme_tables.py) -->", "<!-- bench tables: end -->"
# A sweep of 64 sizes is summarized by these and its geometric mean.
README_SIZES = (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def heading(document, what=""):
    return (f"**{document['op']}{what}** on {document['device']} ({document['date']}, {document['unit']}); "
            f"`{document['command']}`")


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pivot(rows, row_key, column_key, cell):
    """A table of cell(row) with one line per row_key and one column per column_key, in first-seen order."""
    lines, columns = {}, {}
    for row in rows:
        columns.setdefault(column_key(row), None)
        lines.setdefault(row_key(row), {})[column_key(row)] = cell(row)
    return list(columns), [[key, *(cells.get(column, "") for column in columns)] for key, cells in lines.items()]


def percent_of_peak(document, value):
    return f"{100 * value / document['peak']['value']:.0f}%"


def gemm_square(document):
    rows = [r for r in document["rows"] if r["params"]["m"] in README_SIZES or len(document["rows"]) <= 48]
    columns, lines = pivot(
        rows, lambda r: r["params"]["m"], lambda r: f"{r['params']['dtype']} {r['params']['trans']}",
        lambda r: f"{r['ours']:.0f} ({percent_of_peak(document, r['ours'])}) / {r['peer_value']:.0f}: "
                  f"**{r['ratio']:.2f}**")
    text = [heading(document), "",
            f"MFA TFLOPS (% of the {document['peak']['value']:g} peak) / {document['rows'][0]['peer']}: ratio", "",
            markdown(["M = N = K", *columns], lines)]
    for series, summary in document.get("summary", {}).items():
        text.append(f"\n{series}: geometric mean ratio {summary['geomean_ratio']:.2f}, lowest "
                    f"{summary.get('min_ratio', float('nan')):.2f}")
    return "\n".join(text)


def gemm_stream_k(document):
    lines = [[r["case"], f"{r['ours']:.0f}", percent_of_peak(document, r["ours"]), f"{r['ours_data_parallel']:.0f}",
              f"{r['ratio_vs_data_parallel']:.2f}", f"{r['peer_value']:.0f}", f"**{r['ratio']:.2f}**",
              f"`{r['variant']}`"] for r in document["rows"]]
    return "\n".join([heading(document), "", markdown(
        ["case", "MFA auto", "% of peak", "MFA data-parallel", "auto / DP", "cuBLAS", "ratio", "variant"], lines)])


def gemm_gelu(document):
    lines = [[r["case"], r["microseconds"], r["peer_microseconds"], f"**{r['ratio']:.2f}**", f"`{r['variant']}`"]
             for r in document["rows"]]
    return "\n".join([heading(document, " (fused GELU)"), "",
                      markdown(["case", "MFA us", f"{document['rows'][0]['peer']} us", "ratio", "variant"], lines)])


def attention(document):
    columns, lines = pivot(
        document["rows"],
        lambda r: f"{r['params']['dtype']} d{r['params']['head_dim']}{' causal' if r['params']['causal'] else ''}",
        lambda r: f"seq {r['params']['seq_q']}",
        lambda r: f"{r['ours']:.0f} ({percent_of_peak(document, r['ours'])}): **{r['ratio']:.2f}** / "
                  f"{r['ratio_flash']:.2f}")
    text = [heading(document), "",
            "MFA TFLOPS (% of peak): ratio to cuDNN / ratio to the flash backend (torch SDPA, same process)", "",
            markdown(["case", *columns], lines)]
    if document.get("decode_rows"):
        columns, lines = pivot(document["decode_rows"], lambda r: f"KV {r['params']['seq_k']}",
                               lambda r: f"batch {r['params']['batch']}",
                               lambda r: f"{r['microseconds']} us: **{r['time_over_floor']:.2f}x**")
        text += ["", f"Decode (seq_q 1, GQA {document['decode_rows'][0]['params']['heads']}:"
                 f"{document['decode_rows'][0]['params']['heads_kv']}, d128): time of one step in a graph of at "
                 f"least 8 on cold K and V, and its multiple of the time to read K and V once at the copy "
                 f"bandwidth measured in the same run ({document['copy_bandwidth']:.0f} GB/s)", "",
                 markdown(["KV length", *columns], lines)]
    return "\n".join(text)


def group_norm(document):
    def shape(r):
        p = r["params"]
        return f"{p['dtype']} {p['n']}x{p['c']}x{p['h']}x{p['w']} {p['layout']}"

    columns, lines = pivot(
        document["rows"], shape, lambda r: f"{r['params']['pass']}{'' if r['params']['activation'] == 'none' else ' + ' + r['params']['activation']}",
        lambda r: f"{r['microseconds']} us, {r['percent_of_copy']:.0f}% of copy: **{r['ratio']:.2f}**")
    return "\n".join([heading(document), "",
                      f"MFA time, GB/s as % of the copy bandwidth measured in the same run "
                      f"({document['copy_bandwidth']:.0f} GB/s): ratio to {document['rows'][0]['peer']}", "",
                      markdown(["shape", *columns], lines)])


RENDERERS = {"gemm": gemm_square, "gemm_fp32": gemm_square, "gemm_stream_k": gemm_stream_k,
             "gemm_gelu": gemm_gelu, "attention_fwd": attention, "group_norm": group_norm}


def render(document):
    return RENDERERS[document["op"]](document)


def main():
    documents = [json.loads(path.read_text()) for path in sorted((ROOT / "bench" / "results").glob("*.json"))]
    block = "\n\n".join([BEGIN, *(render(document) for document in documents), END])
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        sys.exit(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    readme.write_text(pattern.sub(lambda _: block, text))


if __name__ == "__main__":
    main()
