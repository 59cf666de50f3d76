-- Who made each sale: the verified subject (the token's `sub`) that Envoy passes
-- upstream in x-mesh-subject. Empty for sales recorded before this column and for
-- calls that carried no verified subject (a direct call to the backend).
ALTER TABLE sales ADD COLUMN sold_by text NOT NULL DEFAULT '';
