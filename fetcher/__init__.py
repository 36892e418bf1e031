"""The URL fetcher run in the scan container, and the outbound address policy
(``fetcher.addrpolicy``) it shares with the application (``app.outbound``)."""
