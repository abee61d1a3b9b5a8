"""Run files: the HDF5 `writer` and `reader`, their layout checks and `verify`
(`integrity`), the page journal that makes each commit crash-safe (`journal`), the memory
and disk estimates before a run (`budget`), and Trainers wired to files (`runner`)."""
