from corral._template import Template


def test_render_columns_and_nested():
    t = Template.parse("Subject: {subject}\n{details.amount} {{literal}}")
    assert t.names == [("subject",), ("details", "amount")]
    out = t.render({"subject": "Hi", "details": {"amount": 3.5}})
    assert out == "Subject: Hi\n3.5 {literal}"


def test_render_missing_and_types():
    t = Template.parse("{a}|{b}|{c}|{d}")
    assert t.render({"a": None, "b": True, "c": [1, "x"], "d": 7}) == '|true|[1, "x"]|7'
