"""Writes tpcc.sql: a small TPC-C-like OLTP script for the sqlite3 shell (the catalogue entry
`sqlite-tpcc`, docs/real-programs.md).  Deterministic (a fixed LCG, no imports but sys).

Schema after TPC-C (warehouse, district, customer, item, stock, orders, order_line), scaled
down to 1 warehouse, 10 districts, 300 customers, 1000 items; then NEW_ORDERS new-order
transactions (read district, bump its next order id, insert the order, per line read the item
and update its stock, insert the order line) and as many payment transactions (update
warehouse, district and customer balances), each in BEGIN/COMMIT."""
import sys

NEW_ORDERS = 100
seed = 12345


def rnd(n: int) -> int:
    global seed
    seed = (seed * 1103515245 + 12345) % (1 << 31)
    return seed % n


out = ["PRAGMA journal_mode = MEMORY;",
       "CREATE TABLE warehouse(w_id INTEGER PRIMARY KEY, w_name TEXT, w_ytd REAL);",
       "CREATE TABLE district(d_id INTEGER PRIMARY KEY, d_w_id INT, d_name TEXT, d_ytd REAL,"
       " d_next_o_id INT);",
       "CREATE TABLE customer(c_id INTEGER PRIMARY KEY, c_d_id INT, c_last TEXT, c_balance REAL,"
       " c_data TEXT);",
       "CREATE TABLE item(i_id INTEGER PRIMARY KEY, i_name TEXT, i_price REAL, i_data TEXT);",
       "CREATE TABLE stock(s_i_id INTEGER PRIMARY KEY, s_quantity INT, s_ytd INT, s_data TEXT);",
       "CREATE TABLE orders(o_id INTEGER PRIMARY KEY, o_d_id INT, o_c_id INT, o_ol_cnt INT);",
       "CREATE TABLE order_line(ol_o_id INT, ol_number INT, ol_i_id INT, ol_quantity INT,"
       " ol_amount REAL, PRIMARY KEY(ol_o_id, ol_number));",
       "CREATE INDEX customer_last ON customer(c_d_id, c_last);",
       "BEGIN;",
       "INSERT INTO warehouse VALUES(1, 'W1', 0);"]
out += [f"INSERT INTO district VALUES({d}, 1, 'D{d}', 0, 1);" for d in range(1, 11)]
out += [f"INSERT INTO customer VALUES({c}, {1 + c % 10}, 'LAST{rnd(1000)}', 0, "
        f"hex(randomblob(100)));" for c in range(1, 301)]
out += [f"INSERT INTO item VALUES({i}, 'ITEM{i}', {1 + rnd(10000) / 100}, "
        f"hex(randomblob(24)));" for i in range(1, 1001)]
out += [f"INSERT INTO stock VALUES({i}, {10 + rnd(91)}, 0, hex(randomblob(24)));"
        for i in range(1, 1001)]
out.append("COMMIT;")
o_id = 0
for t in range(NEW_ORDERS):
    d, c = 1 + rnd(10), 1 + rnd(300)
    o_id += 1
    lines = 5 + rnd(11)
    out += ["BEGIN;",
            f"SELECT d_next_o_id FROM district WHERE d_id = {d};",
            f"UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_id = {d};",
            f"INSERT INTO orders VALUES({o_id}, {d}, {c}, {lines});"]
    for n in range(1, lines + 1):
        i, q = 1 + rnd(1000), 1 + rnd(10)
        out += [f"SELECT i_price, i_name FROM item WHERE i_id = {i};",
                f"UPDATE stock SET s_quantity = CASE WHEN s_quantity > {q} + 10 THEN "
                f"s_quantity - {q} ELSE s_quantity - {q} + 91 END, s_ytd = s_ytd + {q} "
                f"WHERE s_i_id = {i};",
                f"INSERT INTO order_line VALUES({o_id}, {n}, {i}, {q}, "
                f"{q} * (SELECT i_price FROM item WHERE i_id = {i}));"]
    out.append("COMMIT;")
    amount = 1 + rnd(5000)
    out += ["BEGIN;",
            f"UPDATE warehouse SET w_ytd = w_ytd + {amount} WHERE w_id = 1;",
            f"UPDATE district SET d_ytd = d_ytd + {amount} WHERE d_id = {d};",
            f"SELECT c_id, c_balance FROM customer WHERE c_d_id = {d} AND "
            f"c_last = 'LAST{rnd(1000)}';",
            f"UPDATE customer SET c_balance = c_balance - {amount} WHERE c_id = {c};",
            "COMMIT;"]
out.append("SELECT count(*), sum(ol_amount) FROM order_line;")
sys.stdout.write("\n".join(out) + "\n")
