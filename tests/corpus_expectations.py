"""Hand-checked expectations for the hardest files of ../shared/corpus/mime.

Every value was read off the raw bytes of the file (decoding encoded words, quoted-printable and
charsets by hand), not copied from the parser. Used by tests/engine/test_mime_expectations.py and by
the browser test of the message page. `sender` is a substring of `ParsedAddress.display()`;
`body_snippet` is a short, distinctive substring of the decoded `text`; when `shown_raw` is True the
body could not be split into MIME parts and the raw body text is shown with a notice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CorpusExpectation:
    path: str  # relative to shared/corpus/mime
    subject: str
    sender: str
    body_snippet: str | None
    shown_raw: bool = False


EXPECTATIONS: list[CorpusExpectation] = [
    # Unquoted boundary containing "=": the stdlib misses it; the parts are recovered.
    CorpusExpectation(
        "mikel-mail/mime_emails/raw_email_with_illegal_boundary.eml",
        "Testing outlook",
        "email_test@me.nowhere",
        "This is an outlook test",
    ),
    # Boundary declared but never used: only raw text can be shown.
    CorpusExpectation("mime4j/testmsgs/missing-boundary.eml", "", "", "AAA", shown_raw=True),
    CorpusExpectation(
        "cpython/msg_41.eml", "64423", "xxx@example.com", "Blah blah blah", shown_raw=True
    ),
    CorpusExpectation(
        "cpython/msg_17.eml",
        "Here is your dingus fish",
        "barry@digicool.com",
        "This is the dingus fish.",
        shown_raw=True,
    ),
    # Body delimiters differ from the declared boundary; header with 8-bit garbage.
    CorpusExpectation(
        "spamscope-mail-parser/mail_malformed_3.eml",
        "Ahorre Dinero en su Recibo de Luz",
        "smgsiso@yahoo.com.mx",
        "Problemas para visualizar",
    ),
    # Raw 8-bit windows-1252 inside an encoded word (Eudora).
    CorpusExpectation(
        "hunnysoft-via-zbateson/m2004.eml",
        "Die Hasen und die Frösche",
        "dwsauder@example.com",
        "Die Hasen klagten einst über ihre mißliche Lage",
    ),
    # Raw (unencoded) UTF-7 headers and a UTF-7 body (Netscape).
    CorpusExpectation(
        "hunnysoft-via-zbateson/m1011.eml",
        "Die Hasen und die Frösche",
        "dwsauder@example.com",
        'Redner, "in steter Furcht vor Menschen und Tieren',
    ),
    # UTF-7 encoded words (Outlook 2000) and a UTF-7 quoted-printable body.
    CorpusExpectation(
        "hunnysoft-via-zbateson/m0006.eml",
        "Die Hasen und die Frösche (Microsoft Outlook 00)",
        "doug@example.com",
        "Die Hasen klagten einst über ihre mißliche Lage",
    ),
    # Raw latin-1 subject folded over two lines (unfolding keeps the indentation).
    CorpusExpectation(
        "hunnysoft-via-zbateson/m0001.eml",
        "Die Hasen und   die Frösche (Microsoft Outlook 00)",
        "Doug Sauder <doug@example.com>",
        "Die Hasen und die Frösche",
    ),
    # charset="invalid-charset".
    CorpusExpectation(
        "hunnysoft-via-zbateson/invalid-charset.eml",
        "Test invalid charset",
        "doug@example.com",
        "A HARE one day ridiculed the short feet",
    ),
    # ISO-2022-JP body, UTF-8 encoded-word headers.
    CorpusExpectation(
        "mikel-mail/multi_charset/japanese_iso_2022.eml",
        "まみむめも",
        "raasdnil@gmail.com",
        "すみません。",
    ),
    # ISO-2022-JP encoded word split over two lines (the split is inside ASCII text).
    CorpusExpectation(
        "mimekit/messages/japanese.eml",
        "日本語メールテスト (testing Japanese emails)",
        "Atsushi Eno",
        "日本語が",
    ),
    CorpusExpectation(
        "mikel-mail/rfc2822/example14.eml",
        "Re: TEST  テストテスト",
        "atsushi@example.com",
        "Hello",
    ),
    # ks_c_5601-1987 (really cp949) subject and body.
    CorpusExpectation(
        "zimbra/TestMailRaw/KOR1.eml",
        "한글 테스트 (Korean test)",
        "jhamm@example.zimbra.com",
        "한글 테스트 메세지입니다.",
    ),
    # GB2312 headers; the body is labelled GB2312 but is UTF-8.
    CorpusExpectation(
        "spamscope-mail-parser/mail_test_12.eml",
        "代开各地增值税发票",
        "张先生 <baoguan@hotmail.com>",
        "我公司可代开各类增值税发票",
    ),
    # Encoded words split into many pieces (no space between the decoded pieces).
    CorpusExpectation(
        "mikel-mail/error_emails/bad_subject.eml",
        "MySurvey.com:  You have a survey waiting!  91123105",
        "MySurvey.com & Carol Adams <carol@mysurvey.com>",
        "You have a survey waiting!",
    ),
    # Raw windows-1252 subject; encoded word inside a quoted display name.
    CorpusExpectation(
        "mikel-mail/error_emails/invalid_subject_characters.eml",
        "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro",
        "Formação Frenetikpolis <info@formacaofrenetik.info>",
        "TEST",
    ),
    # Raw latin-1 display name.
    CorpusExpectation(
        "flanker/from-encoding.eml",
        "Re: running server as root (Was: Re: PUT method)",
        "Ingo Lütkebohle <ingo@blank.pages.de>",
        "If you have a real uid of root",
    ),
    # RFC 6532 UTF-8 headers, including a non-ASCII local part.
    CorpusExpectation(
        "mikel-mail/rfc6532/utf8_headers.eml",
        "Säying Hello",
        "Jöhn Doe",
        "body",
    ),
    # TNEF (winmail.dat) whose text comes from the TNEF body; KOI8-R text part.
    CorpusExpectation("mimekit/tnef/ukr.eml", "rr test 7", "rrtest1@xink.io", "шостий"),
    # TNEF with a PDF inside; subject is two latin-1 QP encoded words.
    CorpusExpectation(
        "php-mime-mail-parser/m0013.eml",
        "50032266 CAR 11_MNPA00A01_9PTX_H00 ATT N° 1467829. pdf",
        "firstname.name@groupe-company.com",
        "Superviseur de voitures",
    ),
    # DSN: To is an empty group (stdlib AttributeError); the explanation is in the preamble.
    CorpusExpectation(
        "mimekit/messages/delivery-status.eml",
        "email delivery error",
        "postmaster@mm1.sprynet.com",
        "err.nosuchuser: newsletter-request@imusic.com",
    ),
    # Raw UTF-8 header with a broken trailing byte; multipart with a bogus boundary.
    CorpusExpectation(
        "flanker/mailformed-headers.eml",
        "\u00b4!",  # ACUTE ACCENT (raw byte 0xB4, windows-1252)
        "headers@gmail.com",
        "Hello",
    ),
    # Nested message/rfc822 (forwarded three times).
    CorpusExpectation(
        "mime4j/mimetools-testmsgs/frag.eml",
        "[Fwd: [Fwd: [Fwd: FW: Another Priceless  Moment]]]",
        "omrec@mailandnews.com",
        "just to add to your personal hell.",
    ),
]
