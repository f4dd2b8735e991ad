"""Text: readers, cleaning, filters, dedup, tokenizer, sampling."""
