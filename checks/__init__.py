"""Built-in checks: one module per check, each returning findings and rendering nothing."""
