-- One row per ProductSold event: the record that makes e-mails idempotent.

CREATE TABLE notifications (
    event_id   uuid PRIMARY KEY,
    order_id   text NOT NULL,
    product_id integer NOT NULL,
    recipient  text NOT NULL,
    subject    text NOT NULL,
    message_id text NOT NULL,        -- the e-mail's Message-ID, stable per event
    channel    text NOT NULL CHECK (channel IN ('smtp', 'log')),
    -- 'sending' from the claim until the mail server accepted the e-mail.
    status     text NOT NULL CHECK (status IN ('sending', 'sent')),
    attempts   integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);

CREATE INDEX notifications_newest_first ON notifications (created_at DESC, event_id DESC);
CREATE INDEX notifications_by_order ON notifications (order_id, created_at DESC, event_id DESC);
