"""Filter stages of the data-quality pipeline (the guide's filters 1, 2 and 5): `quality_filtered`,
`deduplicated` and `balanced`. Each annotates every row (keep + reason + evidence) and records it in `lineage`."""
