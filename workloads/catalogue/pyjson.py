"""The catalogue entry `python-json` (docs/real-programs.md): CPython serving a JSON API in
miniature: build order records, encode them to JSON, decode them back, index them by
customer, aggregate and sort.  Deterministic (no time, no randomness); stdlib only, so it runs
under `python3 -S -E`."""
import json

ROUNDS = 4
orders = [{"id": i, "customer": f"c{i * 7919 % 500:04d}", "lines": [
    {"item": (i * 31 + k * 17) % 2000, "qty": 1 + (i + k) % 9, "price": ((i * k) % 997) / 10}
    for k in range(1 + i % 7)], "note": "x" * (i % 40)} for i in range(2000)]
total = 0
for r in range(ROUNDS):
    batch = orders[(r * 50) % 2000:(r * 50) % 2000 + 400]
    text = json.dumps({"round": r, "orders": batch}, sort_keys=True)
    back = json.loads(text)["orders"]
    by_customer = {}
    for o in back:
        amount = sum(line["qty"] * line["price"] for line in o["lines"])
        by_customer[o["customer"]] = by_customer.get(o["customer"], 0.0) + amount
    top = sorted(by_customer.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    total += len(text) + len(top)
print(total)
