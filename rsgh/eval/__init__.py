"""How codes are judged: exact tie-aware mAP, Recall@N, the classic baselines, the retrieval protocol."""
