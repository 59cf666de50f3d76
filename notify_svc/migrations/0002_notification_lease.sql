-- A lease instead of a row lock held while the mail server answers: a handler
-- claims a notification until lease_until, sends with no connection held, then
-- marks it sent. Another copy of the event may claim it only once the lease has
-- expired (its holder died or gave up), so one e-mail goes out per event.

ALTER TABLE notifications
    ADD COLUMN leased_by   uuid,         -- the claim holding the lease (one per attempt)
    ADD COLUMN lease_until timestamptz;  -- NULL: free to claim (new, released or sent)
