from brushwork.conditioning import BOS, EOS, chunk_ids, tokenize


def test_ids_match_openai_clip():
    assert [BOS] + tokenize("a photo of a cat") + [EOS] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_case_punctuation_and_words_with_end_marker():
    assert tokenize("A Photo of a CAT") == tokenize("a photo of a cat")
    # "mountain," -> the word with its end-of-word marker, then the comma token
    assert tokenize("mountain, lake") == [3965, 267, 2553]


def test_chunks_are_77_long_and_never_truncate():
    ids = tokenize("cat " * 100)
    assert len(ids) == 100
    chunks = chunk_ids(ids, pad_id=EOS)
    assert [len(c) for c in chunks] == [77, 77]
    assert chunks[0][0] == BOS and chunks[0][76] == EOS
    assert chunks[1][:26] == [BOS] + ids[75:] and chunks[1][26] == EOS


def test_empty_prompt_is_one_chunk_and_openclip_pads_with_zero():
    (chunk,) = chunk_ids([], pad_id=0)
    assert chunk[:2] == [BOS, EOS] and set(chunk[2:]) == {0} and len(chunk) == 77
