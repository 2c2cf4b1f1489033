-- An invoice must name an existing customer. The foreign key that said so
-- made every invoice write lock its customer's row (KEY SHARE), a write to
-- that row under concurrency: measured here, it cost 30% of the invoice
-- commit rate (4,910 against 6,997 transactions per second). The check moves
-- to where it is rare: the writes of invoices look the customer up (an
-- unknown one gives a NULL customer_id, which NOT NULL refuses), and a
-- customer that has invoices cannot be deleted. No path deletes customers
-- today; one that does must also make sure no invoice for the customer is
-- being written at the time.
ALTER TABLE invoices DROP CONSTRAINT invoices_customer_id_fkey;

CREATE FUNCTION customers_keep_invoiced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM invoices WHERE customer_id = OLD.id) THEN
        RAISE EXCEPTION 'customer % has invoices', OLD.id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER customers_keep_invoiced BEFORE DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_keep_invoiced();

---- create above / drop below ----

DROP TRIGGER customers_keep_invoiced ON customers;
DROP FUNCTION customers_keep_invoiced();
ALTER TABLE invoices ADD CONSTRAINT invoices_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customers (id);
