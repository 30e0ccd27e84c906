"""Pure pipeline logic (no Flink imports) plus the thin PyFlink wrappers that call it."""
