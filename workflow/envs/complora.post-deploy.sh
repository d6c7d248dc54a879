#!/usr/bin/env bash
# Runs once inside the new conda environment: install the project this workflow belongs to.
set -euo pipefail
pip install -e "$(dirname "$0")/../.."
