-- The revenue group rewrites an invoice's rows at each of its versions:
-- its projection row, and its ledger entries (a month's recognition each,
-- whose amounts and per-day cumulation change with the invoice). Room left
-- on each page lets the new version of a row go on the page of the old
-- one, a heap-only update that touches no index, instead of a new tuple
-- on another page and an entry in every index.
ALTER TABLE revenue_entries SET (fillfactor = 70);
ALTER TABLE revenue_invoices SET (fillfactor = 70);

---- create above / drop below ----

ALTER TABLE revenue_invoices RESET (fillfactor);
ALTER TABLE revenue_entries RESET (fillfactor);
