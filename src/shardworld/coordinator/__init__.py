"""The coordinator: owns the cell map, watches per-zone load, moves cells, scales zones."""
