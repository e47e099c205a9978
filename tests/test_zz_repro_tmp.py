import pytest
from tests.test_corpus_pages import fast_password_hashing, test_it_lists_and_renders_every_corpus_message_with_the_exact_server_bytes as test_a # noqa

@pytest.mark.django_db(transaction=True)
def test_b(bob, live_server, logged_in_page):
    logged_in_page(live_server, bob)
