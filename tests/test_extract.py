from ntulm.posts.extract import extract_ntus, normalize_hashtag, url_domain


def test_hashtags_unicode_and_case():
    tags, *_ = extract_ntus("Go #NLProc and #日本 and #हिन्दी #Ｆｕｌｌ #über!")
    assert tags == ["nlproc", "日本", "हिन्दी", "full", "über"]


def test_hashtag_needs_a_letter_and_word_boundary():
    tags, *_ = extract_ntus(
        "#1 and #2020 are numbers, a#b is not a tag, &#39; nor, but #tag_2020 is"
    )
    assert tags == ["tag_2020"]


def test_trailing_punctuation_and_dedupe():
    tags, handles, urls, _ = extract_ntus(
        "#Tag. #tag, (#other) @Alice: @alice! see https://x.org/a)."
    )
    assert tags == ["tag", "other"]
    assert handles == ["alice"]
    assert urls == ["https://x.org/a"]


def test_emails_and_url_fragments_are_not_ntus():
    tags, handles, urls, _ = extract_ntus(
        "mail me at bob@example.com or http://site.com/page#section @real_user"
    )
    assert tags == []
    assert handles == ["real_user"]
    assert urls == ["http://site.com/page#section"]


def test_mentions_limits():
    _, handles, *_ = extract_ntus(
        "@abcdefghijklmnop is too long, @ok_1 fine, a@b no, @@x no, ＠Wide yes"
    )
    assert handles == ["ok_1", "wide"]


def test_urls_domains_and_media():
    tags, _, urls, media = extract_ntus(
        "look www.Example.com/x and pic.twitter.com/abc and https://t.co/AbC…"
    )
    assert urls == ["www.Example.com/x", "https://t.co/AbC"]
    assert media == ["pic.twitter.com/abc"]  # as v1.1 texts write it, without a scheme
    _, _, urls, media = extract_ntus("photo https://pic.twitter.com/abc https://www.BBC.co.uk/news")
    assert media == ["https://pic.twitter.com/abc"]
    assert [url_domain(u) for u in urls] == ["bbc.co.uk"]
    assert url_domain("not a url at all") is None


def test_balanced_parentheses_in_urls():
    _, _, urls, _ = extract_ntus("(see https://en.wikipedia.org/wiki/Foo_(bar))")
    assert urls == ["https://en.wikipedia.org/wiki/Foo_(bar)"]


def test_normalize_hashtag():
    assert (
        normalize_hashtag("#DeepLook")
        == normalize_hashtag("deeplook")
        == normalize_hashtag("＃ＤｅｅｐＬｏｏｋ")
    )
    assert normalize_hashtag("#Straße") == "strasse"
