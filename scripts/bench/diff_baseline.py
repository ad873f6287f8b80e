"""The baseline RAM's own data loader implies for `tagfix diff`: json.load each annotation file
whole (as recognize-anything's dataset classes do), then count, per slot, the records whose
union_label_id / parse_label_id hold it. Prints the same totals bench-diff.sh reads from tagfix."""
import json
import sys

SLOTS = 4585
union = [0] * SLOTS
parse = [0] * SLOTS
records = 0
for path in sys.argv[1:]:
    with open(path, "r", encoding="utf-8") as f:
        ann = json.load(f)
    records += len(ann)
    for r in ann:
        for i in set(r["union_label_id"]):
            union[i] += 1
        seen = set()
        for ids in r["parse_label_id"]:
            seen.update(ids)
        for i in seen:
            parse[i] += 1
    del ann
absent = sum(1 for c in union if c == 0)
print(f"records={records} absent={absent} union_total={sum(union)} parse_total={sum(parse)}")
