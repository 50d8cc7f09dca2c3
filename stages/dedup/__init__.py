"""The algorithms behind the dedup stages, free of Ray: MinHash signatures (`minhash`), LSH banding
and candidate pairs (`lsh`), exact shingle-set Jaccard (`jaccard`), keys in keeper order and the
decisions built from them (`keys`), connected components (`components`), and what the stages
persist and read back (`store`)."""
