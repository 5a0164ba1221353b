// pgJDBC against Sabot: DDL, prepared statements (past the switch to server-side
// statements with binary results), a view, and DatabaseMetaData. Run by clients.rs.
import java.math.BigDecimal;
import java.sql.*;

public class Jdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/sabot";
        StringBuilder out = new StringBuilder();
        try (Connection c = DriverManager.getConnection(url, "sabot", "")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE j (id INT PRIMARY KEY, name TEXT, price NUMERIC(10,2), at TIMESTAMP, ok BOOLEAN)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO j VALUES (?, ?, ?, ?, ?)")) {
                p.setInt(1, 1);
                p.setString(2, "x");
                p.setBigDecimal(3, new BigDecimal("2.50"));
                p.setTimestamp(4, Timestamp.valueOf("2026-01-01 10:00:00"));
                p.setBoolean(5, true);
                p.executeUpdate();
                p.setInt(1, 2);
                p.setNull(2, Types.VARCHAR);
                p.setNull(3, Types.NUMERIC);
                p.setNull(4, Types.TIMESTAMP);
                p.setNull(5, Types.BOOLEAN);
                p.executeUpdate();
            }
            try (Statement s = c.createStatement()) {
                s.execute("CREATE MATERIALIZED VIEW jv AS SELECT count(*) AS n FROM j");
                s.execute("FLUSH");
            }
            // pgJDBC moves to a named server-side statement with binary results after 5 runs.
            try (PreparedStatement p = c.prepareStatement("SELECT id, name, price, at, ok FROM j WHERE id >= ? ORDER BY id")) {
                for (int run = 0; run < 7; run++) {
                    p.setInt(1, 1);
                    StringBuilder rows = new StringBuilder();
                    try (ResultSet r = p.executeQuery()) {
                        while (r.next()) {
                            rows.append(r.getInt(1)).append('|').append(r.getString(2)).append('|')
                                .append(r.getBigDecimal(3)).append('|').append(r.getTimestamp(4)).append('|')
                                .append(r.getObject(5)).append(';');
                        }
                    }
                    if (run == 0 || run == 6) out.append("rows ").append(rows).append('\n');
                }
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT n FROM jv")) {
                r.next();
                out.append("view ").append(r.getLong(1)).append('\n');
            }
            DatabaseMetaData md = c.getMetaData();
            out.append("product ").append(md.getDatabaseProductName()).append(' ').append(md.getDatabaseMajorVersion()).append('\n');
            try (ResultSet t = md.getTables(null, "public", "%", null)) {
                while (t.next()) out.append("table ").append(t.getString("TABLE_NAME")).append(' ').append(t.getString("TABLE_TYPE")).append('\n');
            }
            try (ResultSet col = md.getColumns(null, "public", "j", "%")) {
                while (col.next()) out.append("column ").append(col.getString("COLUMN_NAME")).append(' ')
                    .append(col.getString("TYPE_NAME")).append(' ').append(col.getInt("DATA_TYPE")).append(' ')
                    .append(col.getString("IS_NULLABLE")).append('\n');
            }
            try (ResultSet pk = md.getPrimaryKeys(null, "public", "j")) {
                while (pk.next()) out.append("pk ").append(pk.getString("COLUMN_NAME")).append('\n');
            }
        }
        System.out.print(out);
    }
}
