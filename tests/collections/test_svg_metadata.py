"""SVG metadata is read without expanding entities or reading other files (billion laughs, XXE), and Adobe
Illustrator files, which declare entities in their DOCTYPE, still give their titles."""

from __future__ import annotations

import time

import pytest

from clipforge.collections.openclipart import load_openclipart, read_metadata

META = """<metadata><rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><cc:Work rdf:about="">
 <dc:title>{title}</dc:title></cc:Work></rdf:RDF></metadata>"""

ILLUSTRATOR = """<?xml version="1.0" encoding="utf-8"?>
<!-- Generator: Adobe Illustrator 10.0, SVG Export Plug-In . SVG Version: 3.0.0 Build 76)  -->
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.0//EN"    "http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd" [
	<!ENTITY ns_extend "http://ns.adobe.com/Extensibility/1.0/">
	<!ENTITY ns_ai "http://ns.adobe.com/AdobeIllustrator/10.0/">
	<!-- a comment with ] and > in it -->
	<!ENTITY ns_odd 'a value with ] inside'>
	<!ENTITY ns_svg "http://www.w3.org/2000/svg">
]>
<svg xmlns:x="&ns_extend;" xmlns:i="&ns_ai;" xmlns="&ns_svg;" width="10" height="10">
""" + META.format(title="Floppy disk") + """
<rect width="10" height="10"/></svg>
"""

LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE svg [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<svg xmlns="http://www.w3.org/2000/svg" data-x="&lol9;">""" + META.format(title="&lol9;") + "</svg>"


def _xxe(secret):
    return f"""<?xml version="1.0"?>
<!DOCTYPE svg [ <!ENTITY xxe SYSTEM "file://{secret}"> <!ENTITY % p SYSTEM "file://{secret}"> %p; ]>
<svg xmlns="http://www.w3.org/2000/svg">""" + META.format(title="&xxe;") + "</svg>"


def _external_dtd(dtd):
    return f"""<?xml version="1.0"?>
<!DOCTYPE svg SYSTEM "file://{dtd}">
<svg xmlns="http://www.w3.org/2000/svg">""" + META.format(title="&secret;") + "</svg>"


def test_illustrator_entities_give_the_title(tmp_path):
    path = tmp_path / "floppy.svg"
    path.write_text(ILLUSTRATOR, encoding="utf-8")
    assert read_metadata(str(path)).title == "Floppy disk"
    catalog = load_openclipart(str(tmp_path))
    assert catalog.items[0].caption == "Floppy disk" and not catalog.unreadable_metadata


def _no_title_or_error(path):
    try:
        return read_metadata(str(path)).title
    except Exception as exc:  # refused: the catalog counts it as unreadable metadata
        return f"refused: {type(exc).__name__}: {exc}"


@pytest.mark.parametrize("level", [3, 9])  # 3: 3 kB, under expat's own guard; 9: 3 GB, which expat stops
def test_billion_laughs_is_not_expanded(tmp_path, level):
    path = tmp_path / "laughs.svg"
    path.write_text(LAUGHS.replace("&lol9;", f"&lol{level};"), encoding="utf-8")
    start = time.perf_counter()
    outcome = _no_title_or_error(path)
    assert time.perf_counter() - start < 2
    assert "lollol" not in outcome and len(outcome) < 500


@pytest.mark.parametrize("make", [_xxe, _external_dtd])
def test_external_entities_read_no_file(tmp_path, make):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY secret SYSTEM "file://{secret}">')
    path = tmp_path / "xxe.svg"
    path.write_text(make(secret if make is _xxe else dtd), encoding="utf-8")
    assert "TOP-SECRET" not in _no_title_or_error(path)


def test_unterminated_doctype_is_an_error_not_a_hang(tmp_path):
    path = tmp_path / "bad.svg"
    path.write_text('<?xml version="1.0"?><!DOCTYPE svg [ <!ENTITY a "x"> ' + "x" * 100_000, encoding="utf-8")
    with pytest.raises(Exception, match="DOCTYPE|subset|ParseError|no element"):
        read_metadata(str(path))
