"""The factory's ground floor: config, contracts, layout, errors and family specs.

Everything else points down here; this package imports nothing else of the project
(``tests/unit/test_import_direction.py`` holds that), so a serving host, an engine
builder and the trainer agree on records, paths and errors by sharing one small package.
"""
