#!/bin/sh
# Re-record the catalogue of real programs (docs/real-programs.md): needs valgrind and the
# packages each recipe names (apt-get install valgrind sqlite3 python3 gcc).
#   workloads/catalogue/record.sh [NAME ...]
set -e
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" -m workloads.catalogue record "$@"
