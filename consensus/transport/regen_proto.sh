#!/usr/bin/env bash
# Regenerate exchange_pb2.py, exchange_pb2.pyi and exchange_pb2_grpc.py from exchange.proto.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PY:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    consensus/transport/exchange.proto
echo "regenerated consensus/transport/exchange_pb2{.py,.pyi,_grpc.py}"
